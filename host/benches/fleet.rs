//! Fleet deploy: a 5 MB model uploaded to and activated on 8 boards (real
//! `rba-device` processes on loopback) with `--parallel 8`, against the
//! same boards one after another (`--parallel 1`), rounds interleaved, a
//! fresh model every round (so every round uploads, fsyncs and switches on
//! every board).
//!
//! Two links: plain loopback (no network to wait for: the gain is what two
//! cores make of overlapping the boards' disk syncs and the host's and
//! boards' CPU work), and each board behind a link shaped like a plant's
//! camera network (100 Mbit/s, 1 ms one way, per board; the host's uplink
//! not limited), where a deploy mostly waits for the network.

#![allow(clippy::unwrap_used)] // a benchmark may panic

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rba_host::board::{ActivationPlan, ModelArtifact, Pinning};
use rba_host::fleet::{self, FleetBoard, FleetOptions, FleetTask, Quiet};
use rba_host::onnx::OnnxModel;
use rba_host::report::fleet::BoardOutcome;
use rba_protocol::boards::LinkKind;
use rba_protocol::RunPolicy;
use rba_testkit::bench::{row, run_as_bench};
use rba_testkit::models::mlp_model;
use rba_testkit::process::{device_binary, DeviceProcess};
use rba_testkit::{write_key_file, KEY};

const BOARDS: usize = 8;
const ROUNDS: usize = 3;

/// A per-board link: `rate` bytes/s each way, `delay` one way.
#[derive(Clone, Copy)]
struct Shape {
    rate: f64,
    delay: Duration,
}

/// Forwards one direction: bytes leave `delay` after they arrived, no
/// faster than `rate`.
fn pump(mut from: TcpStream, mut to: TcpStream, shape: Shape, stop: Arc<AtomicBool>) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = std::thread::spawn(move || {
        let mut free_at = Instant::now();
        while let Ok((arrived, chunk)) = rx.recv() {
            let due = arrived + shape.delay;
            let start = due.max(free_at);
            let done = start + Duration::from_secs_f64(chunk.len() as f64 / shape.rate);
            let now = Instant::now();
            if done > now {
                std::thread::sleep(done - now);
            }
            free_at = done;
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    let mut buf = vec![0u8; 16 * 1024];
    let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    drop(tx);
    let _ = writer.join();
}

/// A shaped link in front of `device`; returns the address to use.
fn shaper(device: SocketAddr, shape: Shape, stop: Arc<AtomicBool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for host in listener.incoming().flatten() {
            let Ok(board) = TcpStream::connect(device) else { continue };
            let _ = (host.set_nodelay(true), board.set_nodelay(true));
            let (h2, b2) = (host.try_clone().unwrap(), board.try_clone().unwrap());
            let (s1, s2) = (stop.clone(), stop.clone());
            std::thread::spawn(move || pump(host, board, shape, s1));
            std::thread::spawn(move || pump(b2, h2, shape, s2));
        }
    });
    addr
}

fn inventory(addrs: &[SocketAddr], key: &Path) -> Vec<FleetBoard> {
    addrs
        .iter()
        .enumerate()
        .map(|(i, a)| FleetBoard {
            name: format!("cam-{}", i + 1),
            link: LinkKind::Tcp,
            address: Some(a.to_string()),
            port: None,
            baud: None,
            key_file: Some(key.to_path_buf()),
            profile: None,
            tags: Vec::new(),
            gates: Vec::new(),
        })
        .collect()
}

/// A 5 MB model, different bytes for every `k` (so each deploy uploads).
fn model(k: usize) -> ModelArtifact {
    let mut onnx = OnnxModel::from_bytes(&mlp_model(660, 3), "bench").unwrap();
    onnx.set_metadata("round", k.to_string());
    ModelArtifact::new(format!("mlp-{k}"), onnx)
}

/// One fleet deploy (activation without gates) of `model`; its wall time.
fn deploy(boards: &[FleetBoard], model: ModelArtifact, parallel: usize) -> Duration {
    let plan = ActivationPlan {
        app: "inspect".into(),
        model,
        gates: Vec::new(),
        bundle: None,
        threads: None,
        warmup: RunPolicy::default(),
        runs: RunPolicy::default(),
        runtime: None,
    };
    let options = FleetOptions { parallel, pinning: Pinning::Off, ..FleetOptions::default() };
    let started = Instant::now();
    let r = fleet::run(boards, &FleetTask::Deploy(plan), &options, Arc::new(Quiet));
    let wall = started.elapsed();
    for b in &r.boards {
        assert_eq!(b.outcome, BoardOutcome::Activated, "{}: {}", b.name, b.message);
    }
    wall
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if !run_as_bench("fleet") {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let key = scratch.path().join("fleet.key");
    write_key_file(&key, KEY);
    let bin = device_binary();
    let stores: Vec<tempfile::TempDir> = (0..BOARDS).map(|_| tempfile::tempdir().unwrap()).collect();
    let devices: Vec<DeviceProcess> = stores
        .iter()
        .map(|s| {
            let dir = s.path().display().to_string();
            let args =
                ["serve", "--tcp", "127.0.0.1:0", "--dir", dir.as_str(), "--threads", "1", "--idle-timeout", "0"];
            DeviceProcess::spawn(&bin, &args, &[("RBA_DEVICE_KEY", KEY)])
        })
        .collect();
    let direct: Vec<SocketAddr> = devices.iter().map(DeviceProcess::tcp_addr).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let shape = Shape { rate: 100e6 / 8.0, delay: Duration::from_millis(1) };
    let shaped: Vec<SocketAddr> = direct.iter().map(|&d| shaper(d, shape, stop.clone())).collect();
    let size = model(0).bytes.len();
    let mut k = 0;
    for (label, addrs) in [("loopback", &direct), ("links shaped to 100 Mbit/s + 1 ms one way, per board", &shaped)] {
        let boards = inventory(addrs, &key);
        // Warm-up: sessions, page cache, the boards' first activation.
        k += 1;
        deploy(&boards, model(k), BOARDS);
        let (mut seq, mut par) = (Vec::new(), Vec::new());
        let mut order: VecDeque<usize> = (0..2 * ROUNDS).collect();
        while let Some(i) = order.pop_front() {
            k += 1;
            let m = model(k);
            if i % 2 == 0 {
                seq.push(deploy(&boards, m, 1));
            } else {
                par.push(deploy(&boards, m, BOARDS));
            }
        }
        let (s, p) = (median(seq.clone()), median(par.clone()));
        eprintln!("fleet {label}: one after another {seq:?}, 8 in parallel {par:?}");
        let ratio = s.as_secs_f64() / p.as_secs_f64();
        row(
            &format!(
                "fleet deploy of a {:.1} MB model to 8 boards ({label}): --parallel 8 vs one after another (speedup, median of {ROUNDS})",
                size as f64 / 1e6
            ),
            &format!("{:.2} s", p.as_secs_f64()),
            &format!("{:.2} s", s.as_secs_f64()),
            ratio,
            ">= 4",
            Some(ratio >= 4.0),
        );
    }
    stop.store(true, Ordering::SeqCst);
    drop(devices);
}
