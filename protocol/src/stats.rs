//! Latency statistics from raw samples, shared so that host and device
//! derive identical figures.
//!
//! Percentiles use the *nearest-rank* method: the p-th percentile of n sorted
//! samples is the sample at 1-based rank `ceil(p * n / 100)` (rank 1 for
//! p = 0). It is always an observed value; no interpolation.

use serde::{Deserialize, Serialize};

/// Coefficient of variation above which a measurement is flagged unstable.
pub const UNSTABLE_CV: f64 = 0.10;

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyStats {
    pub count: u64,
    pub min_ns: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p95_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    pub mean_ns: f64,
    /// Sample standard deviation (n - 1 denominator; 0 for one sample).
    pub std_ns: f64,
    /// `std_ns / mean_ns` (0 when the mean is 0).
    pub cv: f64,
    /// `cv > UNSTABLE_CV`: rerun on a quieter board, or with more runs.
    pub unstable: bool,
}

/// Nearest-rank percentile of already sorted samples; `None` if empty.
pub fn percentile_sorted(sorted: &[u64], p: u32) -> Option<u64> {
    let n = sorted.len() as u64;
    if n == 0 {
        return None;
    }
    let p = u64::from(p.min(100));
    let rank = (p * n).div_ceil(100).max(1);
    usize::try_from(rank - 1).ok().and_then(|i| sorted.get(i)).copied()
}

impl LatencyStats {
    /// `None` for an empty sample set.
    #[cfg(feature = "std")]
    pub fn from_samples(samples: &[u64]) -> Option<LatencyStats> {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let n = sorted.len();
        let min = *sorted.first()?;
        let max = *sorted.last()?;
        let mean = sorted.iter().map(|&s| s as f64).sum::<f64>() / n as f64;
        let var =
            if n > 1 { sorted.iter().map(|&s| (s as f64 - mean).powi(2)).sum::<f64>() / (n - 1) as f64 } else { 0.0 };
        let std = var.sqrt();
        let cv = if mean > 0.0 { std / mean } else { 0.0 };
        let pct = |p| percentile_sorted(&sorted, p).unwrap_or(max);
        Some(LatencyStats {
            count: n as u64,
            min_ns: min,
            p50_ns: pct(50),
            p90_ns: pct(90),
            p95_ns: pct(95),
            p99_ns: pct(99),
            max_ns: max,
            mean_ns: mean,
            std_ns: std,
            cv,
            unstable: cv > UNSTABLE_CV,
        })
    }
}

#[cfg(all(test, feature = "std"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn empty() {
        assert_eq!(LatencyStats::from_samples(&[]), None);
        assert_eq!(percentile_sorted(&[], 50), None);
    }

    #[test]
    fn single() {
        let s = LatencyStats::from_samples(&[7]).unwrap();
        assert_eq!((s.min_ns, s.p50_ns, s.p99_ns, s.max_ns), (7, 7, 7, 7));
        assert_eq!((s.mean_ns, s.std_ns, s.cv, s.unstable), (7.0, 0.0, 0.0, false));
    }

    #[test]
    fn hand_checked_ten() {
        // Unsorted 10..=100 step 10. Nearest rank: p50 -> rank 5 (50),
        // p90 -> rank 9 (90), p95 -> ceil(9.5)=10 (100), p99 -> 10 (100).
        let s = LatencyStats::from_samples(&[100, 20, 30, 10, 50, 60, 40, 80, 90, 70]).unwrap();
        assert_eq!(s.count, 10);
        assert_eq!((s.min_ns, s.p50_ns, s.p90_ns, s.p95_ns, s.p99_ns, s.max_ns), (10, 50, 90, 100, 100, 100));
        assert_eq!(s.mean_ns, 55.0);
        // Sum of squared deviations = 8250; / 9 = 916.67; sqrt = 30.2765.
        assert!((s.std_ns - 30.276_503_5).abs() < 1e-6, "{}", s.std_ns);
        assert!((s.cv - 0.550_481_9).abs() < 1e-6);
        assert!(s.unstable);
    }

    #[test]
    fn hundred_and_stable() {
        // 1..=100: p50 = 50, p90 = 90, p95 = 95, p99 = 99.
        let v: Vec<u64> = (1..=100).collect();
        let s = LatencyStats::from_samples(&v).unwrap();
        assert_eq!((s.p50_ns, s.p90_ns, s.p95_ns, s.p99_ns), (50, 90, 95, 99));
        // 1000 +- 1: cv ~ 0.001, stable.
        let v: Vec<u64> = (0..100).map(|i| 999 + (i % 3)).collect();
        let s = LatencyStats::from_samples(&v).unwrap();
        assert!(!s.unstable && s.cv < 0.01);
    }

    #[test]
    fn percentile_edges() {
        let v = [1, 2, 3];
        assert_eq!(percentile_sorted(&v, 0), Some(1));
        assert_eq!(percentile_sorted(&v, 33), Some(1));
        assert_eq!(percentile_sorted(&v, 34), Some(2));
        assert_eq!(percentile_sorted(&v, 100), Some(3));
        assert_eq!(percentile_sorted(&v, 250), Some(3));
    }
}
