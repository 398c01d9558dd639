//! Benchmark options, the report of one benchmark or A/B comparison, and the
//! paired bootstrap interval on the speedup.

use rba_protocol::rng::splitmix64;
use rba_protocol::stats::percentile_sorted;
use rba_protocol::{BenchmarkResult, DeviceIdentity, RunPolicy, RuntimeRequest};
use serde::Serialize;

/// Benchmark budget.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub warmup: RunPolicy,
    /// Per model; A/B runs alternate.
    pub runs: RunPolicy,
    /// `None`: the board's default.
    pub threads: Option<u32>,
    /// Feed the first sample of this uploaded bundle instead of synthetic input.
    pub input_bundle: Option<String>,
    /// The runtime of every model (`None`: tract); see
    /// [`Device::bench_arms`](super::Device::bench_arms) for one per arm.
    pub runtime: Option<RuntimeRequest>,
    /// Bootstrap resamples for the speedup interval.
    pub resamples: usize,
    pub seed: u64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            warmup: RunPolicy { count: 5, min_time_ms: 0 },
            runs: RunPolicy { count: 50, min_time_ms: 0 },
            threads: None,
            input_bundle: None,
            runtime: None,
            resamples: 2000,
            seed: 0,
        }
    }
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct BenchReport {
    pub device: DeviceIdentity,
    /// One per model, in the order given.
    pub results: Vec<BenchmarkResult>,
    /// With two models: the interleaved comparison.
    pub ab: Option<AbComparison>,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct AbComparison {
    /// The arms: the model, with its runtime when the arms' runtimes differ
    /// (`vit-digits (onnxruntime)`).
    pub model_a: String,
    pub model_b: String,
    /// `p50(B) / p50(A)` as the device computed it (below 1: B is faster).
    pub ratio_of_medians: f64,
    /// `p50(A) / p50(B)` with its bootstrap interval.
    pub speedup: Option<Speedup>,
}

/// How many times faster B is than A: `median(A) / median(B)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct Speedup {
    pub point: f64,
    pub low: f64,
    pub high: f64,
    pub confidence: f64,
    pub resamples: usize,
}

fn median(sorted: &[u64]) -> Option<f64> {
    percentile_sorted(sorted, 50).map(|v| v as f64)
}

/// Speedup of B over A (ratio of nearest-rank medians, as in the protocol's
/// statistics) with a seeded percentile-bootstrap interval. Equal-length
/// samples are resampled in pairs: A/B runs alternate, so run i of each
/// shared the same moment of the board (heat, background load), and pairing
/// keeps that drift out of the interval's width. `None` without samples.
pub fn speedup_ci(a: &[u64], b: &[u64], confidence: f64, resamples: usize, seed: u64) -> Option<Speedup> {
    let sorted = |v: &[u64]| {
        let mut s = v.to_vec();
        s.sort_unstable();
        s
    };
    let ma = median(&sorted(a))?;
    let mb = median(&sorted(b))?;
    if mb <= 0.0 {
        return None;
    }
    let point = ma / mb;
    let mut state = seed;
    let mut pick = |n: usize| ((u128::from(splitmix64(&mut state)) * n as u128) >> 64) as usize;
    let (mut ra, mut rb) = (Vec::with_capacity(a.len()), Vec::with_capacity(b.len()));
    let mut ratios = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        ra.clear();
        rb.clear();
        if a.len() == b.len() {
            for _ in 0..a.len() {
                let i = pick(a.len());
                ra.push(a[i]);
                rb.push(b[i]);
            }
        } else {
            ra.extend((0..a.len()).map(|_| a[pick(a.len())]));
            rb.extend((0..b.len()).map(|_| b[pick(b.len())]));
        }
        ra.sort_unstable();
        rb.sort_unstable();
        if let (Some(x), Some(y)) = (median(&ra), median(&rb)) {
            if y > 0.0 {
                ratios.push(x / y);
            }
        }
    }
    if ratios.is_empty() {
        return Some(Speedup { point, low: point, high: point, confidence, resamples: 0 });
    }
    ratios.sort_by(f64::total_cmp);
    let alpha = (1.0 - confidence).clamp(0.0, 1.0) / 2.0;
    let last = ratios.len() - 1;
    let at = |q: f64| ratios[((q * ratios.len() as f64).floor() as usize).min(last)];
    Some(Speedup { point, low: at(alpha), high: at(1.0 - alpha), confidence, resamples: ratios.len() })
}
