//! What measuring costs: the per-run overhead of the measurement loop (two
//! clock reads and a push around an empty run), and the fastest possible
//! tract run (a 4x3 linear model) through the runtime, measured in the same
//! run; and what a worker process costs per job: the same benchmark job
//! (the 4x3 linear, one measured run) through two in-process daemons, one
//! running jobs in `rba-device worker` processes and one on its own thread,
//! rounds interleaved, plus the bare spawn and handoff (the worker
//! self-test's round trip): `cargo bench -p rba-device --bench overhead
//! --profile dev`.

#![allow(clippy::unwrap_used)]

use std::io::Write;

use std::path::Path;
use std::time::Instant;

use rba_device::measure::{run_phase, stats, Caps, MonotonicClock};
use rba_device::worker::{self, Isolation};
use rba_protocol::{ArtifactKind, LatencyStats, RunPolicy};
use rba_testkit::daemon::{bench_req, connect_inproc, fast_client_config, no_progress, spawn_inproc, test_options};
use rba_testkit::models::small_linear;

/// Interleaved rounds of the per-job comparison.
const JOB_ROUNDS: usize = 60;

fn row(line: &str) {
    if let Ok(path) = std::env::var("RBA_BENCH_OUT") {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        writeln!(f, "{line}").unwrap();
    }
}

fn ms(ns: u64) -> String {
    format!("{:.2} ms", ns as f64 / 1e6)
}

/// The same one-run benchmark job on a daemon with workers and on one
/// without, interleaved; and the bare spawn and handoff.
fn worker_cost() {
    let program = Path::new(env!("CARGO_BIN_EXE_rba-device")).to_path_buf();
    let dir_p = tempfile::tempdir().unwrap();
    let dir_t = tempfile::tempdir().unwrap();
    let board = |dir: &Path, isolation| rba_device::InProcessOptions { isolation, ..test_options(dir, 1 << 20, None) };
    let (dev_p, board_p) = spawn_inproc(board(dir_p.path(), Isolation::Process { program: program.clone() }));
    let (dev_t, board_t) = spawn_inproc(board(dir_t.path(), Isolation::Thread));
    let mut cp = connect_inproc(&dev_p, fast_client_config(None)).unwrap();
    let mut ct = connect_inproc(&dev_t, fast_client_config(None)).unwrap();
    for c in [&mut cp, &mut ct] {
        c.upload(ArtifactKind::Model, "lin", &small_linear(), |_| {}).unwrap();
    }
    // The smallest job: no warm-up, one measured run.
    let mut req = bench_req("lin", 1);
    req.warmup.count = 0;
    let (mut job_p, mut job_t) = (vec![], vec![]);
    for round in 0..JOB_ROUNDS + 2 {
        let t0 = Instant::now();
        cp.benchmark(&req, no_progress).unwrap();
        let t1 = Instant::now();
        ct.benchmark(&req, no_progress).unwrap();
        let t2 = Instant::now();
        // The first two rounds warm caches and the page cache.
        if round >= 2 {
            job_p.push((t1 - t0).as_nanos() as u64);
            job_t.push((t2 - t1).as_nanos() as u64);
        }
    }
    // The latency samples themselves: a usual job (20 warm-up runs, 200
    // measured), in a worker and on the daemon thread, interleaved.
    let mut req = bench_req("lin", 200);
    req.warmup.count = 20;
    let (mut run_p, mut run_t, mut rss_p, mut rss_t) = (vec![], vec![], 0, 0);
    for _ in 0..10 {
        let rp = cp.benchmark(&req, no_progress).unwrap();
        let rt = ct.benchmark(&req, no_progress).unwrap();
        run_p.extend(rp.samples_ns);
        run_t.extend(rt.samples_ns);
        rss_p = rss_p.max(rp.peak_rss_bytes.unwrap_or(0));
        rss_t = rss_t.max(rt.peak_rss_bytes.unwrap_or(0));
    }
    let mut spawn = Vec::new();
    for _ in 0..JOB_ROUNDS {
        spawn.push(worker::self_test(&program).unwrap().as_nanos() as u64);
    }
    drop((cp, ct, dev_p, dev_t));
    board_p.join().unwrap();
    board_t.join().unwrap();
    let (jp, jt, sp) = (stats(&job_p).unwrap(), stats(&job_t).unwrap(), stats(&spawn).unwrap());
    let (rp, rt): (LatencyStats, LatencyStats) = (stats(&run_p).unwrap(), stats(&run_t).unwrap());
    say(&format!(
        "benchmark job (4x3 linear, 1 run), p50 per job over {JOB_ROUNDS} interleaved rounds: worker process {} \
         (p90 {}), daemon thread {} (p90 {}); a worker costs {} per job",
        ms(jp.p50_ns),
        ms(jp.p90_ns),
        ms(jt.p50_ns),
        ms(jt.p90_ns),
        ms(jp.p50_ns.saturating_sub(jt.p50_ns))
    ));
    say(&format!("worker spawn + handoff alone (self-test round trip): p50 {}, p90 {}", ms(sp.p50_ns), ms(sp.p90_ns)));
    say(&format!(
        "measured runs (20 warm-up, 200 measured, x10 jobs; timed inside the worker around `run` only): p50 {} ns \
         in a worker, {} ns on the daemon thread; peak RSS reported: the worker's {:.1} MiB, the bench process's \
         {:.1} MiB (daemon thread)",
        rp.p50_ns,
        rt.p50_ns,
        rss_p as f64 / f64::from(1 << 20),
        rss_t as f64 / f64::from(1 << 20)
    ));
    row(&format!(
        "| device: a benchmark job (4x3 linear, 1 run, p50 per job) in a worker process vs on the daemon thread | {} | {} | {:.2} | - | - |",
        ms(jp.p50_ns),
        ms(jt.p50_ns),
        jp.p50_ns as f64 / jt.p50_ns.max(1) as f64
    ));
    row(&format!(
        "| device: worker spawn + handoff alone (self-test round trip, p50) vs the in-thread job | {} | {} | {:.2} | - | - |",
        ms(sp.p50_ns),
        ms(jt.p50_ns),
        sp.p50_ns as f64 / jt.p50_ns.max(1) as f64
    ));
    row(&format!(
        "| device: one measured run (4x3 linear, p50 of 10 jobs x 200 runs) in a worker vs on the daemon thread | {} ns | {} ns | {:.2} | - | - |",
        rp.p50_ns,
        rt.p50_ns,
        rp.p50_ns as f64 / rt.p50_ns.max(1) as f64
    ));
}

fn say(msg: &str) {
    let _ = writeln!(std::io::stderr().lock(), "measurement overhead: {msg}");
}

fn main() {
    let mut clock = MonotonicClock::default();
    let policy = RunPolicy { count: 100_000, min_time_ms: 0 };
    let r = run_phase::<()>(
        &mut clock,
        policy,
        1,
        1,
        Caps { max_runs: 100_000, ..Caps::default() },
        |_| Ok(()),
        |_, _| Ok(()),
    )
    .unwrap();
    let s = stats(&r.samples[0]).unwrap();
    let per_round = r.elapsed_ns as f64 / f64::from(r.runs());
    say(&format!(
        "empty run: min {} ns, p50 {} ns, p99 {} ns, mean {:.1} ns; loop round trip {per_round:.1} ns ({} runs)",
        s.min_ns,
        s.p50_ns,
        s.p99_ns,
        s.mean_ns,
        r.runs()
    ));

    let model = rba_device::runtime::load(&small_linear(), 1).unwrap();
    let input = model.synthetic_inputs(1).unwrap();
    let r = run_phase(
        &mut clock,
        RunPolicy { count: 5_000, min_time_ms: 0 },
        1,
        1,
        Caps::default(),
        |_| model.run(&input),
        |_, _| Ok(()),
    )
    .unwrap();
    let t = stats(&r.samples[0]).unwrap();
    say(&format!("tract 4x3 linear: min {} ns, p50 {} ns, p99 {} ns", t.min_ns, t.p50_ns, t.p99_ns));
    let ratio = s.p50_ns as f64 / t.p50_ns.max(1) as f64;
    say(&format!("measurement overhead / smallest tract run (p50): {ratio:.4}"));
    row(&format!(
        "| device: measurement overhead per run (empty run, p50) vs the smallest tract run (4x3 linear, p50) | {} ns | {} ns | {ratio:.4} | - | - |",
        s.p50_ns, t.p50_ns
    ));
    worker_cost();
}
