//! Models that must not take the daemon down: the real `rba-device` binary
//! on TCP loopback, fed model bombs of at most 300 bytes (built here with
//! `rba_onnx::build`, see `rba_testkit::models::bombs`).
//!
//! - What the static memory check sees (a `ConstantOfShape` of 2^40, 2^32
//!   or 2^29 floats, an `Expand` to 16 GiB, a `Range` of 10^12, an input of
//!   2^36 elements, dims whose product overflows u64, a zero `Range`
//!   delta) is refused by Benchmark and Evaluate alike with an error naming
//!   the tensor, its node, its size and the budget, in worker processes and
//!   on the daemon's thread; a normal model benchmarks fine right after
//!   each, and the daemon's peak RSS stays far below the budget.
//! - What it cannot see (a shape computed at run time, a remainder by zero
//!   that makes tract panic) ends only the worker and its job; a worker that
//!   dies (a signal, an abort for want of memory, garbage, an exit without
//!   a result) is the job's error, and the next job runs.
//! - Requests for 64 threads are clamped to the cores, and the daemon's
//!   thread count does not grow with such jobs.
//!
//! Every loop is bounded in count, and every wait in time.

#![allow(clippy::unwrap_used)]

use std::ops::ControlFlow;
use std::path::Path;
use std::time::{Duration, Instant};

use rba_device::worker::Isolation;
use rba_protocol::*;
use rba_testkit::daemon::{bench_req, connect_inproc, fast_client_config, no_progress, spawn_inproc, test_options};
use rba_testkit::models::{bombs, linear_bundle, mlp_model, small_linear};
use rba_testkit::process::DeviceProcess;
use rba_testkit::KEY;

/// The binary cargo built for these tests.
const DEVICE: &str = env!("CARGO_BIN_EXE_rba-device");

const MIB: u64 = 1 << 20;

/// The budget the daemons here run with (well below this machine's memory,
/// so a bomb of 2^29 floats = 2 GiB is over it).
const BUDGET: &str = "512MiB";
const BUDGET_BYTES: u64 = 512 * MIB;

/// What the daemon's own peak RSS may reach above the budget... and it
/// stays far below even the budget: the daemon never loads a bomb.
const RSS_MARGIN: u64 = 64 * MIB;

fn serve(dir: &Path, extra: &[&str]) -> DeviceProcess {
    let d = dir.display().to_string();
    let mut args = vec!["serve", "--tcp", "127.0.0.1:0", "--dir", d.as_str(), "--threads", "1"];
    args.extend_from_slice(extra);
    DeviceProcess::spawn(DEVICE, &args, &[("RBA_DEVICE_KEY", KEY), ("RBA_LOG", "info")])
}

fn client(p: &DeviceProcess) -> Client<std::net::TcpStream> {
    let config = ClientConfig {
        request_timeout: Duration::from_secs(10),
        job_idle_timeout: Duration::from_secs(120),
        max_retries: 1,
        ..ClientConfig::tcp(rba_testkit::test_key())
    };
    Client::connect_tcp(p.tcp_addr(), config).unwrap()
}

fn remote(e: ClientError) -> RemoteError {
    match e {
        ClientError::Remote(r) => r,
        other => panic!("expected a remote error, got {other:?}"),
    }
}

/// A `kB` field of `/proc/<pid>/status`, in bytes; `Threads` as a count.
fn status(p: &DeviceProcess, field: &str) -> u64 {
    if field == "Threads" {
        let text = std::fs::read_to_string(format!("/proc/{}/status", p.pid())).unwrap();
        let line = text.lines().find(|l| l.starts_with("Threads:")).unwrap();
        return line.split_whitespace().nth(1).unwrap().parse().unwrap();
    }
    p.status_bytes(field)
}

/// The live processes whose parent is `pid` (its workers), from the parent
/// field of every `/proc/<pid>/stat`.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // "pid (comm) state ppid ...": the command may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        let mut fields = rest.split_whitespace();
        let (state, ppid) = (fields.next(), fields.next().and_then(|p| p.parse::<u32>().ok()));
        if ppid == Some(pid) && state != Some("Z") {
            out.push(child);
        }
    }
    out
}

/// The static bombs: name, model, what the error says after "model 'name': ".
fn static_bombs() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    vec![
        (
            "cos40",
            bombs::constant_of_shape(&[1 << 40]),
            "tensor 'y' (ConstantOfShape 'n1') would hold 2^40 floats = 4 TiB, more than the 512 MiB memory budget",
        ),
        (
            "cos32",
            bombs::constant_of_shape(&[1 << 32]),
            "tensor 'y' (ConstantOfShape 'n1') would hold 2^32 floats = 16 GiB, more than the 512 MiB memory budget",
        ),
        (
            "cos29",
            bombs::constant_of_shape(&[1 << 29]),
            "tensor 'y' (ConstantOfShape 'n1') would hold 2^29 floats = 2 GiB, more than the 512 MiB memory budget",
        ),
        (
            "expand16g",
            bombs::expand(&[1 << 16, 1 << 16]),
            "tensor 'y' (Expand 'e1') would hold 2^32 floats = 16 GiB, more than the 512 MiB memory budget",
        ),
        (
            "range1e12",
            bombs::range(1_000_000_000_000, 1),
            "tensor 'y' (Range 'r1') would hold 10^12 int64 values = 7.3 TiB, more than the 512 MiB memory budget",
        ),
        ("range0", bombs::range(10, 0), "tensor 'y' (Range 'r1'): Range with a zero delta never ends"),
        (
            "input36",
            bombs::input(&[1 << 12, 1 << 12, 1 << 12]),
            "input 'x' would hold 2^36 floats = 256 GiB, more than the 512 MiB memory budget",
        ),
        (
            "overflow",
            bombs::input(&[1 << 32, 1 << 32, 1 << 32]),
            "input 'x' would hold 2^32 x 2^32 x 2^32 floats: the size overflows u64 (more than 2^64 elements)",
        ),
    ]
}

/// Every static bomb through Benchmark and Evaluate, a normal model
/// benchmarked after each; the daemon's peak RSS at the end.
fn static_bombs_are_refused(isolation: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut p = serve(dir.path(), &["--memory-budget", BUDGET, "--isolation", isolation]);
    let mut c = client(&p);
    c.upload(ArtifactKind::Model, "lin", &small_linear(), |_| {}).unwrap();
    let bundle = linear_bundle(&[[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]], Some(vec![0, 1]), None);
    c.upload(ArtifactKind::EvalBundle, "b", &bundle, |_| {}).unwrap();
    let started = Instant::now();
    for (name, model, says) in static_bombs() {
        assert!(model.len() <= bombs::MAX_BYTES, "{name}: {} bytes", model.len());
        c.upload(ArtifactKind::Model, name, &model, |_| {}).unwrap();
        let expected = format!("model '{name}': {says}");
        let e = remote(c.benchmark(&bench_req(name, 1), no_progress).unwrap_err());
        assert_eq!(e, RemoteError::Unsupported(expected.clone()), "{name} ({isolation}), benchmark");
        let req = EvalRequest { model: name.into(), bundle: "b".into(), threads: None };
        let e = remote(c.evaluate(&req, no_progress).unwrap_err());
        assert_eq!(e, RemoteError::Unsupported(expected), "{name} ({isolation}), evaluate");
        // A normal model right after.
        let r = c.benchmark(&bench_req("lin", 3), no_progress).unwrap();
        assert_eq!(r.samples_ns.len(), 3);
        assert!(p.is_running());
    }
    let e = c.evaluate(&EvalRequest { model: "lin".into(), bundle: "b".into(), threads: None }, no_progress).unwrap();
    assert_eq!(e.top1_accuracy, Some(1.0));
    let hwm = status(&p, "VmHWM");
    eprintln!(
        "{isolation}: {} bombs refused in {:.2} s; the daemon's peak RSS {} MiB (budget {BUDGET})",
        static_bombs().len(),
        started.elapsed().as_secs_f64(),
        hwm / MIB
    );
    assert!(hwm < BUDGET_BYTES + RSS_MARGIN, "peak RSS {hwm} bytes");
    assert!(hwm < 128 * MIB, "the daemon never loaded a bomb: peak RSS {} MiB", hwm / MIB);
    drop(c);
    p.sigterm();
    assert!(p.wait_exit(Duration::from_secs(10)).unwrap().success(), "{}", p.stderr());
}

#[test]
fn static_bombs_are_refused_in_worker_processes() {
    static_bombs_are_refused("process");
}

#[test]
fn static_bombs_are_refused_on_the_daemon_thread_too() {
    static_bombs_are_refused("thread");
}

#[test]
fn runtime_bombs_end_only_their_worker() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = serve(dir.path(), &["--memory-budget", "256MiB"]);
    assert!(p.wait_for("jobs run in worker processes", Duration::from_secs(10)).is_some(), "{}", p.stderr());
    let mut c = client(&p);
    c.upload(ArtifactKind::Model, "lin", &small_linear(), |_| {}).unwrap();
    // 3e8 floats (1.2 GB): fits this machine, not the worker's limit of
    // 256 MiB plus its margin. The static check cannot size it.
    let range = bombs::runtime_range(3e8);
    let division = bombs::runtime_remainder_by_zero();
    for m in [&range, &division] {
        assert!(m.len() <= bombs::MAX_BYTES, "{} bytes", m.len());
    }
    c.upload(ArtifactKind::Model, "grow", &range, |_| {}).unwrap();
    c.upload(ArtifactKind::Model, "div0", &division, |_| {}).unwrap();
    for round in 0..2 {
        match remote(c.benchmark(&bench_req("grow", 1), no_progress).unwrap_err()) {
            RemoteError::Runtime(m) => {
                assert!(
                    m.starts_with("model 'grow': the job was stopped: it ran out of its 256 MiB memory budget"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
        match remote(c.benchmark(&bench_req("div0", 1), no_progress).unwrap_err()) {
            RemoteError::Runtime(m) => {
                assert!(m.starts_with("model 'div0': the job was stopped: "), "{m}");
                assert!(m.contains("by zero"), "{m}");
            }
            other => panic!("{other:?}"),
        }
        let r = c.benchmark(&bench_req("lin", 3), no_progress).unwrap();
        assert_eq!(r.samples_ns.len(), 3, "round {round}");
    }
    assert!(p.is_running());
    assert!(children(p.pid()).is_empty(), "no worker outlives its job");
    let hwm = status(&p, "VmHWM");
    eprintln!("runtime bombs: the daemon's peak RSS {} MiB", hwm / MIB);
    assert!(hwm < 128 * MIB, "{hwm}");
    drop(c);
    p.sigterm();
    assert!(p.wait_exit(Duration::from_secs(10)).unwrap().success(), "{}", p.stderr());
}

#[test]
fn a_panic_inside_tract_ends_only_the_job_on_the_daemon_thread() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = serve(dir.path(), &["--isolation", "thread"]);
    let mut c = client(&p);
    c.upload(ArtifactKind::Model, "lin", &small_linear(), |_| {}).unwrap();
    c.upload(ArtifactKind::Model, "div0", &bombs::runtime_remainder_by_zero(), |_| {}).unwrap();
    for _ in 0..2 {
        match remote(c.benchmark(&bench_req("div0", 1), no_progress).unwrap_err()) {
            RemoteError::Runtime(m) => {
                assert!(m.starts_with("model 'div0': the job was stopped: the runtime panicked: "), "{m}");
                assert!(m.contains("by zero"), "{m}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.benchmark(&bench_req("lin", 2), no_progress).unwrap().samples_ns.len(), 2);
    }
    drop(c);
    p.sigterm();
    assert!(p.wait_exit(Duration::from_secs(10)).unwrap().success(), "{}", p.stderr());
}

#[test]
fn a_worker_reports_its_own_peak_rss_and_cancel_kills_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = serve(dir.path(), &["--memory-budget", BUDGET]);
    let mut c = client(&p);
    // 2^24 floats: 64 MiB the worker holds, within the budget.
    c.upload(ArtifactKind::Model, "fill64m", &bombs::constant_of_shape(&[1 << 24]), |_| {}).unwrap();
    let r = c.benchmark(&bench_req("fill64m", 2), no_progress).unwrap();
    let worker_peak = r.peak_rss_bytes.unwrap();
    let daemon_peak = status(&p, "VmHWM");
    eprintln!("64 MiB tensor: the worker's peak RSS {} MiB, the daemon's {} MiB", worker_peak / MIB, daemon_peak / MIB);
    assert!(worker_peak >= 64 * MIB, "{worker_peak}");
    assert!(daemon_peak < 64 * MIB, "the daemon never held the tensor: {daemon_peak}");
    // Cancel a long job: its worker is killed, the next job runs.
    c.upload(ArtifactKind::Model, "lin", &small_linear(), |_| {}).unwrap();
    let mut req = bench_req("lin", 1);
    req.runs.min_time_ms = 60_000;
    let mut workers = Vec::new();
    let started = Instant::now();
    let e = c
        .benchmark(&req, |prog| {
            if prog.phase == Phase::Measuring {
                workers = children(p.pid());
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap_err();
    assert_eq!(remote(e), RemoteError::Cancelled);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(workers.len(), 1, "one worker ran the job: {workers:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !children(p.pid()).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(children(p.pid()).is_empty(), "the cancelled worker is gone");
    assert!(!Path::new(&format!("/proc/{}", workers[0])).exists(), "and reaped");
    assert_eq!(c.benchmark(&bench_req("lin", 2), no_progress).unwrap().samples_ns.len(), 2);
    drop(c);
    p.sigterm();
    assert!(p.wait_exit(Duration::from_secs(10)).unwrap().success(), "{}", p.stderr());
}

/// 64 threads asked, the cores given; the daemon's threads stay bounded.
fn threads_are_clamped(isolation: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut p = serve(dir.path(), &["--isolation", isolation]);
    let mut c = client(&p);
    let cores = c.session().unwrap().device.cores;
    c.upload(ArtifactKind::Model, "mlp", &mlp_model(64, 3), |_| {}).unwrap();
    let mut req = bench_req("mlp", 3);
    req.threads = Some(64);
    let mut counts = Vec::new();
    for _ in 0..5 {
        let r = c.benchmark(&req, no_progress).unwrap();
        assert_eq!(r.threads, cores, "64 threads clamped to the {cores} cores");
        counts.push(status(&p, "Threads"));
    }
    for t in [1, 2, 64] {
        req.threads = Some(t);
        let r = c.benchmark(&req, no_progress).unwrap();
        assert_eq!(r.threads, t.min(cores));
        counts.push(status(&p, "Threads"));
    }
    eprintln!("{isolation}: the daemon's threads after each job: {counts:?} ({cores} cores)");
    let first = counts[0];
    assert!(counts.iter().all(|&n| n <= first + u64::from(cores)), "{counts:?}");
    // Main, acceptor, session reader, a few helpers; plus, on the daemon
    // thread, one pool per count up to the cores (1 + 2 + ... + cores).
    let pools = if isolation == "thread" { u64::from(cores) * u64::from(cores + 1) / 2 } else { 0 };
    assert!(*counts.iter().max().unwrap() <= 8 + pools, "{counts:?}");
    drop(c);
    p.sigterm();
    assert!(p.wait_exit(Duration::from_secs(10)).unwrap().success(), "{}", p.stderr());
}

#[test]
fn threads_are_clamped_to_the_cores_in_workers() {
    threads_are_clamped("process");
}

#[test]
fn threads_are_clamped_to_the_cores_and_pools_bounded_on_the_daemon_thread() {
    threads_are_clamped("thread");
}

/// Stand-in workers (shell scripts) that die in each way a real one can:
/// each death is the job's error, and the daemon serves the next job.
#[test]
fn worker_deaths_become_job_errors() {
    let dir = tempfile::tempdir().unwrap();
    let scripts = tempfile::tempdir().unwrap();
    let deaths = [
        ("abort", "kill -ABRT $$", "crashed (signal 6)"),
        (
            "oom",
            "echo 'memory allocation of 4398046511104 bytes failed' >&2; kill -ABRT $$",
            "ran out of its 512 MiB memory budget",
        ),
        ("segv", "kill -SEGV $$", "crashed (signal 11)"),
        ("killed", "kill -KILL $$", "was killed (signal 9; the kernel's out-of-memory killer, if nobody else)"),
        ("exit", "exit 7", "exited with status 7 without a result"),
        ("garbage", "printf 'garbage!'; sleep 5", "sent an unreadable reply"),
        ("silent", "exit 0", "exited with status 0 without a result"),
    ];
    for (name, body, says) in deaths {
        let script = scripts.path().join(name);
        std::fs::write(&script, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::process::Command::new("chmod").arg("+x").arg(&script).status().unwrap();
        let options = rba_device::InProcessOptions {
            isolation: Isolation::Process { program: script },
            memory_budget: rba_device::limits::MemoryBudget::Bytes(BUDGET_BYTES),
            ..test_options(dir.path(), 1 << 20, None)
        };
        let (dev, board) = spawn_inproc(options);
        let mut c = connect_inproc(&dev, fast_client_config(None)).unwrap();
        c.upload(ArtifactKind::Model, "lin", &small_linear(), |_| {}).unwrap();
        let started = Instant::now();
        for _ in 0..2 {
            let e = remote(c.benchmark(&bench_req("lin", 1), no_progress).unwrap_err());
            assert_eq!(e, RemoteError::Runtime(format!("model 'lin': the job was stopped: it {says}")), "{name}");
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{name}");
        c.ping(1).unwrap();
        drop(c);
        drop(dev);
        board.join().unwrap();
    }
}
