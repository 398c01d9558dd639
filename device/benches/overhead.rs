//! What measuring costs: the per-run overhead of the measurement loop (two
//! clock reads and a push around an empty run), and the fastest possible
//! tract run (a 4x3 linear model) through the runtime, measured in the same
//! run: `cargo bench -p rba-device --bench overhead --profile dev`.

#![allow(clippy::unwrap_used)]

use std::io::Write;

use rba_device::measure::{run_phase, stats, Caps, MonotonicClock};
use rba_protocol::RunPolicy;
use rba_testkit::models::small_linear;

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
    if let Ok(path) = std::env::var("RBA_BENCH_OUT") {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        writeln!(
            f,
            "| device: measurement overhead per run (empty run, p50) vs the smallest tract run (4x3 linear, p50) | {} ns | {} ns | {ratio:.4} | - | - |",
            s.p50_ns, t.p50_ns
        )
        .unwrap();
    }
}
