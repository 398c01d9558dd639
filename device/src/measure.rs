//! How runs are measured: warm-up and measured phases, each bounded by a
//! count and a minimum time (both must be reached; zero disables a bound),
//! with one or more interleaved *arms* (A/B comparisons run ABAB...).
//!
//! Independent of tract: a phase drives a closure per run, so the loop,
//! the stopping rule and the sample collection are tested with a scripted
//! clock. Statistics come from [`rba_protocol::LatencyStats`].

use std::time::{Duration, Instant};

use rba_protocol::{LatencyStats, RunPolicy};

/// Monotonic nanoseconds; a trait so tests can script time.
pub trait Clock {
    fn now_ns(&mut self) -> u64;
}

/// The real clock.
pub struct MonotonicClock {
    start: Instant,
}

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock { start: Instant::now() }
    }
}

impl Clock for MonotonicClock {
    fn now_ns(&mut self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Limits that hold whatever the request says.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    /// Most runs per arm in one phase (bounds memory and the response size).
    pub max_runs: u32,
    /// Longest a phase may last, whatever its minimum time says.
    pub max_time: Duration,
}

impl Default for Caps {
    fn default() -> Self {
        // 50 000 samples encode to ~250 KB: well inside a frame.
        Caps { max_runs: 50_000, max_time: Duration::from_secs(600) }
    }
}

/// Whether a phase is done after `runs` runs (per arm) in `elapsed`.
pub fn policy_met(policy: RunPolicy, runs: u32, elapsed_ns: u64) -> bool {
    runs >= policy.count && elapsed_ns >= u64::from(policy.min_time_ms) * 1_000_000
}

/// What a phase observed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PhaseResult {
    /// Per arm: each run's duration in ns, in run order.
    pub samples: Vec<Vec<u64>>,
    /// Wall time of the whole phase.
    pub elapsed_ns: u64,
    /// Stopped by a cap before the policy was met.
    pub capped: bool,
}

impl PhaseResult {
    pub fn runs(&self) -> u32 {
        self.samples.first().map_or(0, |s| u32::try_from(s.len()).unwrap_or(u32::MAX))
    }
}

/// Runs rounds of `arms` runs (arm 0, 1, ..., 0, 1, ...) until `policy`
/// is met for every arm, at least `min_runs` per arm, or a cap is hit.
///
/// `run(arm)` performs one run; its duration is measured around the call.
/// `between(done_rounds, elapsed_ns)` is called after every round (progress
/// reports, cancellation): an error stops the phase.
pub fn run_phase<E>(
    clock: &mut dyn Clock,
    policy: RunPolicy,
    min_runs: u32,
    arms: usize,
    caps: Caps,
    mut run: impl FnMut(usize) -> Result<(), E>,
    mut between: impl FnMut(u32, u64) -> Result<(), E>,
) -> Result<PhaseResult, E> {
    let policy = RunPolicy { count: policy.count.max(min_runs), ..policy };
    let max_time_ns = u64::try_from(caps.max_time.as_nanos()).unwrap_or(u64::MAX);
    let start = clock.now_ns();
    let mut samples: Vec<Vec<u64>> = vec![Vec::new(); arms];
    let mut rounds = 0u32;
    let mut elapsed = 0;
    let mut capped = false;
    while !policy_met(policy, rounds, elapsed) {
        if rounds >= caps.max_runs || elapsed >= max_time_ns {
            capped = true;
            break;
        }
        for (arm, arm_samples) in samples.iter_mut().enumerate() {
            let t0 = clock.now_ns();
            run(arm)?;
            let t1 = clock.now_ns();
            arm_samples.push(t1.saturating_sub(t0));
        }
        rounds += 1;
        elapsed = clock.now_ns().saturating_sub(start);
        between(rounds, elapsed)?;
    }
    Ok(PhaseResult { samples, elapsed_ns: elapsed, capped })
}

/// Times one call.
pub fn time_once<T, E>(clock: &mut dyn Clock, f: impl FnOnce() -> Result<T, E>) -> Result<(T, u64), E> {
    let t0 = clock.now_ns();
    let v = f()?;
    Ok((v, clock.now_ns().saturating_sub(t0)))
}

/// Statistics of one arm's samples (`None` if there are none).
pub fn stats(samples: &[u64]) -> Option<LatencyStats> {
    LatencyStats::from_samples(samples)
}

/// A/B ratio of medians: `b.p50 / a.p50` (below 1: B is faster).
pub fn ratio_of_medians(a: &LatencyStats, b: &LatencyStats) -> f64 {
    if a.p50_ns == 0 {
        if b.p50_ns == 0 {
            1.0
        } else {
            f64::INFINITY
        }
    } else {
        b.p50_ns as f64 / a.p50_ns as f64
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Each `now_ns` call returns the next scripted instant.
    struct Script(Vec<u64>, usize);

    impl Clock for Script {
        fn now_ns(&mut self) -> u64 {
            let v = self.0.get(self.1).copied().unwrap_or(u64::MAX);
            self.1 += 1;
            v
        }
    }

    /// Advances by the durations of a cycle at each run; bookkeeping calls
    /// (start, end of round) cost nothing.
    struct Stepper {
        t: u64,
        durations: Vec<u64>,
        i: usize,
    }

    impl Clock for Stepper {
        fn now_ns(&mut self) -> u64 {
            self.t
        }
    }

    impl Stepper {
        fn run(&mut self) {
            self.t += self.durations[self.i % self.durations.len()];
            self.i += 1;
        }
    }

    #[test]
    fn samples_are_the_scripted_durations() {
        // start, (t0, t1, end-of-round) x 3: runs of 5, 7, 11 ns.
        let mut clock = Script(vec![0, 1, 6, 6, 10, 17, 17, 20, 31, 31], 0);
        let policy = RunPolicy { count: 3, min_time_ms: 0 };
        let r = run_phase::<()>(&mut clock, policy, 1, 1, Caps::default(), |_| Ok(()), |_, _| Ok(())).unwrap();
        assert_eq!(r.samples, vec![vec![5, 7, 11]]);
        assert_eq!(r.elapsed_ns, 31);
        assert!(!r.capped);
    }

    #[test]
    fn count_and_min_time_must_both_be_met() {
        // Runs of 1 ms each: count 3 with a minimum of 10 ms needs 10 runs.
        let clock = std::cell::RefCell::new(Stepper { t: 0, durations: vec![1_000_000], i: 0 });
        struct Shared<'a>(&'a std::cell::RefCell<Stepper>);
        impl Clock for Shared<'_> {
            fn now_ns(&mut self) -> u64 {
                self.0.borrow_mut().now_ns()
            }
        }
        let measure = |policy: RunPolicy| {
            run_phase::<()>(
                &mut Shared(&clock),
                policy,
                0,
                1,
                Caps::default(),
                |_| {
                    clock.borrow_mut().run();
                    Ok(())
                },
                |_, _| Ok(()),
            )
            .unwrap()
        };
        let r = measure(RunPolicy { count: 3, min_time_ms: 10 });
        assert_eq!(r.runs(), 10);
        assert!(r.samples[0].iter().all(|&s| s == 1_000_000));
        // Count dominates when the time is short.
        let r = measure(RunPolicy { count: 25, min_time_ms: 10 });
        assert_eq!(r.runs(), 25);
    }

    #[test]
    fn zero_policy_and_min_runs() {
        let mut clock = MonotonicClock::default();
        let zero = RunPolicy::default();
        let r = run_phase::<()>(&mut clock, zero, 0, 1, Caps::default(), |_| Ok(()), |_, _| Ok(())).unwrap();
        assert_eq!(r.runs(), 0, "a zero warm-up runs nothing");
        let r = run_phase::<()>(&mut clock, zero, 1, 1, Caps::default(), |_| Ok(()), |_, _| Ok(())).unwrap();
        assert_eq!(r.runs(), 1, "a measured phase runs at least once");
    }

    #[test]
    fn arms_interleave_abab() {
        let mut order = Vec::new();
        let mut clock = MonotonicClock::default();
        let policy = RunPolicy { count: 3, min_time_ms: 0 };
        let r = run_phase::<()>(
            &mut clock,
            policy,
            1,
            2,
            Caps::default(),
            |arm| {
                order.push(arm);
                Ok(())
            },
            |_, _| Ok(()),
        )
        .unwrap();
        assert_eq!(order, [0, 1, 0, 1, 0, 1]);
        assert_eq!(r.samples.len(), 2);
        assert_eq!(r.samples[1].len(), 3);
    }

    #[test]
    fn caps_and_errors_stop_a_phase() {
        let mut clock = MonotonicClock::default();
        let policy = RunPolicy { count: 1000, min_time_ms: 0 };
        let caps = Caps { max_runs: 7, max_time: Duration::from_secs(60) };
        let r = run_phase::<()>(&mut clock, policy, 1, 1, caps, |_| Ok(()), |_, _| Ok(())).unwrap();
        assert_eq!((r.runs(), r.capped), (7, true));
        let r = run_phase(
            &mut clock,
            policy,
            1,
            1,
            Caps::default(),
            |_| Ok(()),
            |done, _| if done == 4 { Err("stop") } else { Ok(()) },
        );
        assert_eq!(r, Err("stop"));
        let r = run_phase(&mut clock, policy, 1, 1, Caps::default(), |_| Err("boom"), |_, _| Ok(()));
        assert_eq!(r, Err("boom"));
    }

    #[test]
    fn stats_of_hand_computed_samples() {
        // Samples 3, 1, 4, 1, 5, 9, 2, 6 (ns). Sorted: 1 1 2 3 4 5 6 9.
        // Nearest rank: p50 -> ceil(4) = rank 4 -> 3; p90 -> ceil(7.2) = 8 -> 9;
        // p95, p99 -> rank 8 -> 9. Mean 31/8 = 3.875.
        // Squared deviations sum: 8.265625+8.265625+3.515625+0.765625+0.015625
        // +1.265625+4.515625+26.265625 = 52.875; /7 = 7.553571; std = 2.748376.
        let s = stats(&[3, 1, 4, 1, 5, 9, 2, 6]).unwrap();
        assert_eq!((s.count, s.min_ns, s.p50_ns, s.p90_ns, s.p95_ns, s.p99_ns, s.max_ns), (8, 1, 3, 9, 9, 9, 9));
        assert!((s.mean_ns - 3.875).abs() < 1e-12);
        assert!((s.std_ns - 2.748_376).abs() < 1e-6, "{}", s.std_ns);
        assert!((s.cv - 2.748_376 / 3.875).abs() < 1e-6);
        assert!(s.unstable);
        // 1000 x 20 and 1100 x 1: cv = 21.82 / 1004.76 = 0.0217: stable.
        let mut v = vec![1000u64; 20];
        v.push(1100);
        let s = stats(&v).unwrap();
        assert!((s.mean_ns - 1_004.761_904_8).abs() < 1e-6);
        assert!((s.std_ns - 21.821_789).abs() < 1e-5, "{}", s.std_ns);
        assert!(!s.unstable);
        assert_eq!((s.p50_ns, s.p95_ns, s.p99_ns), (1000, 1000, 1100));
        assert_eq!(stats(&[]), None);
    }

    #[test]
    fn ratio() {
        let a = stats(&[100, 200, 300]).unwrap();
        let b = stats(&[50, 100, 150]).unwrap();
        assert_eq!(ratio_of_medians(&a, &b), 0.5);
        assert_eq!(ratio_of_medians(&b, &a), 2.0);
    }
}
