//! Sums whose result does not depend on the order of their terms
//! (METHOD.md, "Calibration statistics", precision).
//!
//! Every statistic is kept as an unevaluated pair `value + residue` of f64s:
//! each term is added with Knuth's TwoSum, which returns the rounded sum and
//! the exact rounding error; the errors are summed into `residue`. The pair
//! carries about 100 significant bits, so the pair of a one-shot capture and
//! the pair of merged shards (the same terms, summed in another order) agree
//! to ~1e-30 relative, and [`normalize`] rounds both to the same f64 `value`
//! unless the exact sum falls within that distance of a rounding boundary
//! (a chance of order `terms * 2^-53` per statistic, far below one for any
//! realistic capture). The fits and scores read `value`; `residue` only
//! travels with it so that sums can be merged exactly.

/// `a + b` as the rounded sum and its exact rounding error (Knuth's TwoSum;
/// no branch, no assumption on the magnitudes).
#[inline(always)]
pub fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let bp = s - a;
    let e = (a - (s - bp)) + (b - bp);
    (s, e)
}

/// Adds the term `v` to the pair `(value, residue)`.
#[inline(always)]
pub fn add(value: &mut f64, residue: &mut f64, v: f64) {
    let (s, e) = two_sum(*value, v);
    *value = s;
    *residue += e;
}

/// Adds the pair `(v, r)` to the pair `(value, residue)` and normalizes.
#[inline(always)]
pub fn add_pair(value: &mut f64, residue: &mut f64, v: f64, r: f64) {
    let (s, e) = two_sum(*value, v);
    let (hi, lo) = two_sum(s, *residue + r + e);
    *value = hi;
    *residue = lo;
}

/// Rounds the pair to its nearest f64 in `value`, keeping the remainder in
/// `residue` (the pair still holds the same sum).
#[inline(always)]
pub fn normalize(value: &mut f64, residue: &mut f64) {
    let (hi, lo) = two_sum(*value, *residue);
    *value = hi;
    *residue = lo;
}

/// Element-wise [`add_pair`] of two slices of pairs.
pub fn add_pairs(value: &mut [f64], residue: &mut [f64], v: &[f64], r: &[f64]) {
    for (((h, l), &v), &r) in value.iter_mut().zip(residue.iter_mut()).zip(v).zip(r) {
        add_pair(h, l, v, r);
    }
}

/// Element-wise [`normalize`].
pub fn normalize_all(value: &mut [f64], residue: &mut [f64]) {
    for (h, l) in value.iter_mut().zip(residue.iter_mut()) {
        normalize(h, l);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic terms spanning many magnitudes and both signs.
    fn terms(n: usize) -> Vec<f64> {
        let mut s = 0x2545F4914F6CDD1Du64;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let m = (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
                m * 10f64.powi((s % 13) as i32 - 6)
            })
            .collect()
    }

    #[test]
    fn two_sum_is_exact() {
        let (s, e) = two_sum(1.0, 1e-30);
        assert_eq!((s, e), (1.0, 1e-30));
        let (s, e) = two_sum(0.1, 0.2);
        assert_eq!(s, 0.1 + 0.2);
        // 0.1 + 0.2 rounds up by 2^-54 * 2^-1... the error restores the exact sum.
        assert!(e != 0.0 && e.abs() < 1e-16);
    }

    #[test]
    fn sums_in_any_order_and_any_grouping_agree_bit_for_bit() {
        let t = terms(10_000);
        let whole = {
            let (mut v, mut r) = (0.0, 0.0);
            t.iter().for_each(|&x| add(&mut v, &mut r, x));
            normalize(&mut v, &mut r);
            (v, r)
        };
        // Four interleaved "shards", each summed separately, then merged in reverse.
        let mut parts = [(0.0, 0.0); 4];
        for (i, &x) in t.iter().enumerate() {
            let p = &mut parts[i % 4];
            add(&mut p.0, &mut p.1, x);
        }
        let (mut v, mut r) = (0.0, 0.0);
        for p in parts.iter_mut().rev() {
            normalize(&mut p.0, &mut p.1);
            add_pair(&mut v, &mut r, p.0, p.1);
        }
        assert_eq!(v.to_bits(), whole.0.to_bits());
        // The naive sums differ: the test is not vacuous.
        let naive: f64 = t.iter().sum();
        let naive_rev: f64 = t.iter().rev().sum();
        assert_ne!(naive.to_bits(), naive_rev.to_bits());
    }
}
