//! Closed-form least-squares translators from streaming sufficient
//! statistics (METHOD.md, "Fitting").
//!
//! Rows are token (or pixel) feature vectors. For inputs `X` (`n x dx`) and
//! targets `Y` (`n x dy`) we accumulate, in f64, `G = X^T X`, `C = X^T Y`,
//! `sum X`, `sum Y` and `||Y||^2`; memory is O(d^2) whatever `n` is. Each
//! chunk's products are computed in f32 by faer and summed into f64.

use faer::linalg::matmul::matmul;
use faer::linalg::solvers::Solve;
use faer::{Accum, Mat, MatRef, Par, Side};
use serde::{Deserialize, Serialize};

use super::compensated;

/// First and second moments of one tensor's rows.
///
/// Every sum is kept with its [`compensated`] residue: `sum`, `gram` and
/// `sq_norm` hold the sums rounded to f64 (what fits and scores read), the
/// `residue` what that rounding left out, so two `Moments` merge exactly
/// ([`Moments::merge`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Moments {
    pub rows: f64,
    pub sum: Vec<f64>,
    /// `X^T X`.
    #[serde(with = "mat_serde")]
    pub gram: Mat<f64>,
    /// `sum ||x||^2` (the trace of `gram`, kept exact for scores).
    pub sq_norm: f64,
    pub residue: MomentsResidue,
}

/// The compensation terms of a [`Moments`]; `gram` stays `0 x 0` until the
/// first Gram product (targets of folded fits never have one).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MomentsResidue {
    pub sum: Vec<f64>,
    #[serde(with = "mat_serde")]
    pub gram: Mat<f64>,
    pub sq_norm: f64,
}

/// Cross products of two tensors' rows (`X^T Y`), with their residue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cross {
    #[serde(with = "mat_serde")]
    pub xy: Mat<f64>,
    #[serde(with = "mat_serde")]
    pub residue: Mat<f64>,
}

/// Two statistics that cannot be added: their shapes differ.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{what}: {a} vs {b}")]
pub struct ShapeMismatch {
    pub what: &'static str,
    pub a: String,
    pub b: String,
}

/// Rows per f32 matrix product before its result is added in f64: long
/// enough for an efficient product, short enough that f32 rounding stays
/// near 1e-6 relative.
pub const PRODUCT_ROWS: usize = 64;

/// Adds `a^T b` into `(acc, residue)`: f32 products over row chunks of
/// [`PRODUCT_ROWS`], summed in f64 in chunk order, and that sum added with
/// its rounding error (see [`compensated`]). The result depends only on the
/// rows given in this call, not on what was added before: a capture that
/// always passes the same rows together (a group of images) gets the same
/// terms however its images are split into shards.
fn add_product(acc: &mut Mat<f64>, residue: &mut Mat<f64>, a: MatRef<'_, f32>, b: MatRef<'_, f32>, par: Par) {
    if residue.nrows() != acc.nrows() || residue.ncols() != acc.ncols() {
        *residue = Mat::zeros(acc.nrows(), acc.ncols());
    }
    let mut chunk = Mat::<f32>::zeros(a.ncols(), b.ncols());
    let rows = a.nrows();
    let single = rows <= PRODUCT_ROWS;
    // Plain f64 sums over the chunks of this call (one TwoSum per element
    // per call, not per chunk: it would cost a sixth of a capture).
    let mut total = if single { Mat::<f64>::zeros(0, 0) } else { Mat::<f64>::zeros(acc.nrows(), acc.ncols()) };
    for start in (0..rows).step_by(PRODUCT_ROWS) {
        let n = PRODUCT_ROWS.min(rows - start);
        let (ac, bc) = (a.subrows(start, n), b.subrows(start, n));
        matmul(&mut chunk, Accum::Replace, ac.transpose(), bc, 1.0f32, par);
        if single {
            break;
        }
        // Column slices rather than `acc[(i, j)]`: no per-element bounds
        // checks, and the loop vectorises (it was 30% of a ViT-S capture).
        for j in 0..total.ncols() {
            for (s, &v) in total.col_as_slice_mut(j).iter_mut().zip(chunk.col_as_slice(j)) {
                *s += v as f64;
            }
        }
    }
    for j in 0..acc.ncols() {
        let values = acc.col_as_slice_mut(j).iter_mut().zip(residue.col_as_slice_mut(j));
        if single {
            for ((s, r), &v) in values.zip(chunk.col_as_slice(j)) {
                compensated::add(s, r, v as f64);
            }
        } else {
            for ((s, r), &v) in values.zip(total.col_as_slice(j)) {
                compensated::add(s, r, v);
            }
        }
    }
}

/// Views `rows x cols` row-major data as a matrix.
pub fn rows_view(data: &[f32], cols: usize) -> MatRef<'_, f32> {
    MatRef::from_row_major_slice(data, data.len() / cols.max(1), cols)
}

fn shape_of(m: &Mat<f64>) -> String {
    format!("{}x{}", m.nrows(), m.ncols())
}

/// Adds the pairs `(b, b_res)` into `(a, a_res)` element-wise; a `0 x 0`
/// residue counts as zeros.
fn add_mat(a: &mut Mat<f64>, a_res: &mut Mat<f64>, b: &Mat<f64>, b_res: &Mat<f64>) {
    let has_res = |m: &Mat<f64>, r: &Mat<f64>| r.nrows() == m.nrows() && r.ncols() == m.ncols();
    if !has_res(a, a_res) && !has_res(b, b_res) {
        // Neither was ever summed into (a fold target's Gram): keep the
        // residue unallocated unless the addition itself rounds.
        let mut res = Mat::<f64>::zeros(a.nrows(), a.ncols());
        let mut rounded = false;
        for j in 0..a.ncols() {
            for ((h, l), &v) in a.col_as_slice_mut(j).iter_mut().zip(res.col_as_slice_mut(j)).zip(b.col_as_slice(j)) {
                compensated::add_pair(h, l, v, 0.0);
                rounded |= *l != 0.0;
            }
        }
        if rounded {
            *a_res = res;
        }
        return;
    }
    if a_res.nrows() != a.nrows() || a_res.ncols() != a.ncols() {
        *a_res = Mat::zeros(a.nrows(), a.ncols());
    }
    let b_has_res = b_res.nrows() == b.nrows() && b_res.ncols() == b.ncols();
    for j in 0..a.ncols() {
        let (av, ar) = (a.col_as_slice_mut(j), a_res.col_as_slice_mut(j));
        if b_has_res {
            compensated::add_pairs(av, ar, b.col_as_slice(j), b_res.col_as_slice(j));
        } else {
            for ((h, l), &v) in av.iter_mut().zip(ar.iter_mut()).zip(b.col_as_slice(j)) {
                compensated::add_pair(h, l, v, 0.0);
            }
        }
    }
}

fn normalize_mat(a: &mut Mat<f64>, res: &mut Mat<f64>) {
    if res.nrows() != a.nrows() || res.ncols() != a.ncols() {
        return;
    }
    for j in 0..a.ncols() {
        compensated::normalize_all(a.col_as_slice_mut(j), res.col_as_slice_mut(j));
    }
}

impl Moments {
    pub fn new(d: usize) -> Self {
        Self {
            rows: 0.0,
            sum: vec![0.0; d],
            gram: Mat::zeros(d, d),
            sq_norm: 0.0,
            residue: MomentsResidue { sum: vec![0.0; d], gram: Mat::zeros(0, 0), sq_norm: 0.0 },
        }
    }

    pub fn dim(&self) -> usize {
        self.sum.len()
    }

    /// Adds a chunk of rows (row-major, `dim()` columns).
    pub fn update(&mut self, x: &[f32], par: Par) {
        let d = self.dim();
        let view = rows_view(x, d);
        add_product(&mut self.gram, &mut self.residue.gram, view, view, par);
        self.update_target(x);
    }

    /// Adds rows to the sums and norms only, leaving `gram` alone: enough
    /// for a fit's *target*, whose Gram the fit never reads.
    pub fn update_target(&mut self, y: &[f32]) {
        let d = self.dim();
        if self.residue.sum.len() != d {
            self.residue.sum = vec![0.0; d];
        }
        // Plain sums over these rows, then added with their rounding error
        // (as in `add_product`: the terms depend on this call's rows only).
        let (mut sum, mut sq) = (vec![0f64; d], 0f64);
        for row in y.chunks_exact(d) {
            for (s, &v) in sum.iter_mut().zip(row) {
                *s += v as f64;
            }
            sq += row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>();
        }
        for ((s, r), v) in self.sum.iter_mut().zip(self.residue.sum.iter_mut()).zip(sum) {
            compensated::add(s, r, v);
        }
        compensated::add(&mut self.sq_norm, &mut self.residue.sq_norm, sq);
        self.rows += (y.len() / d.max(1)) as f64;
    }

    pub fn mean(&self) -> Vec<f64> {
        self.sum.iter().map(|s| s / self.rows.max(1.0)).collect()
    }

    /// Rounds every sum to its nearest f64 (the residue keeps the rest).
    pub fn normalize(&mut self) {
        if self.residue.sum.len() == self.sum.len() {
            compensated::normalize_all(&mut self.sum, &mut self.residue.sum);
        }
        normalize_mat(&mut self.gram, &mut self.residue.gram);
        compensated::normalize(&mut self.sq_norm, &mut self.residue.sq_norm);
    }

    /// Adds `other`'s rows: the moments of both row sets together.
    pub fn merge(&mut self, other: &Moments) -> Result<(), ShapeMismatch> {
        if self.dim() != other.dim() || self.gram.nrows() != other.gram.nrows() {
            return Err(ShapeMismatch {
                what: "moments",
                a: format!("{} features", self.dim()),
                b: format!("{} features", other.dim()),
            });
        }
        self.rows += other.rows;
        if self.residue.sum.len() != self.sum.len() {
            self.residue.sum = vec![0.0; self.sum.len()];
        }
        if other.residue.sum.len() == other.sum.len() {
            compensated::add_pairs(&mut self.sum, &mut self.residue.sum, &other.sum, &other.residue.sum);
        } else {
            let zeros = vec![0.0; other.sum.len()];
            compensated::add_pairs(&mut self.sum, &mut self.residue.sum, &other.sum, &zeros);
        }
        add_mat(&mut self.gram, &mut self.residue.gram, &other.gram, &other.residue.gram);
        compensated::add_pair(&mut self.sq_norm, &mut self.residue.sq_norm, other.sq_norm, other.residue.sq_norm);
        Ok(())
    }
}

impl Cross {
    pub fn new(dx: usize, dy: usize) -> Self {
        Self { xy: Mat::zeros(dx, dy), residue: Mat::zeros(0, 0) }
    }

    /// Cross products without residue (e.g. computed from other statistics).
    pub fn from_mat(xy: Mat<f64>) -> Self {
        Self { xy, residue: Mat::zeros(0, 0) }
    }

    pub fn update(&mut self, x: &[f32], y: &[f32], par: Par) {
        let (dx, dy) = (self.xy.nrows(), self.xy.ncols());
        add_product(&mut self.xy, &mut self.residue, rows_view(x, dx), rows_view(y, dy), par);
    }

    /// Rounds every sum to its nearest f64 (the residue keeps the rest).
    pub fn normalize(&mut self) {
        normalize_mat(&mut self.xy, &mut self.residue);
    }

    /// Adds `other`'s rows.
    pub fn merge(&mut self, other: &Cross) -> Result<(), ShapeMismatch> {
        if self.xy.nrows() != other.xy.nrows() || self.xy.ncols() != other.xy.ncols() {
            return Err(ShapeMismatch { what: "cross products", a: shape_of(&self.xy), b: shape_of(&other.xy) });
        }
        add_mat(&mut self.xy, &mut self.residue, &other.xy, &other.residue);
        Ok(())
    }
}

/// `Mat<f64>` as `(rows, cols, column-major values)`; values are stored
/// bit for bit (postcard writes f64 as 8 little-endian bytes).
mod mat_serde {
    use faer::Mat;
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::ser::SerializeTuple;
    use serde::{Deserializer, Serializer};

    struct Values<'a>(&'a Mat<f64>);

    impl serde::Serialize for Values<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeSeq;
            let m = self.0;
            let mut seq = s.serialize_seq(Some(m.nrows() * m.ncols()))?;
            for j in 0..m.ncols() {
                for v in m.col_as_slice(j) {
                    seq.serialize_element(v)?;
                }
            }
            seq.end()
        }
    }

    pub fn serialize<S: Serializer>(m: &Mat<f64>, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(3)?;
        t.serialize_element(&(m.nrows() as u64))?;
        t.serialize_element(&(m.ncols() as u64))?;
        t.serialize_element(&Values(m))?;
        t.end()
    }

    struct MatVisitor;

    impl<'de> Visitor<'de> for MatVisitor {
        type Value = Mat<f64>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a matrix as (rows, cols, column-major values)")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Mat<f64>, A::Error> {
            let rows: u64 = seq.next_element()?.ok_or_else(|| A::Error::invalid_length(0, &self))?;
            let cols: u64 = seq.next_element()?.ok_or_else(|| A::Error::invalid_length(1, &self))?;
            let values: Vec<f64> = seq.next_element()?.ok_or_else(|| A::Error::invalid_length(2, &self))?;
            let (rows, cols) = (rows as usize, cols as usize);
            if rows.checked_mul(cols) != Some(values.len()) {
                return Err(A::Error::custom(format!("a {rows}x{cols} matrix with {} values", values.len())));
            }
            Ok(Mat::from_fn(rows, cols, |i, j| values[j * rows + i]))
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Mat<f64>, D::Error> {
        d.deserialize_tuple(3, MatVisitor)
    }
}

/// The kind of map fitted (METHOD.md, "Fitting").
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FitKind {
    /// `T = G^-1 C` (the paper's choice).
    Linear,
    /// With a bias: centre, solve, recover `b = mean(Y) - mean(X) T`.
    Affine,
    /// `T = (G + lambda I)^-1 C`, lambda relative to `trace(G) / d`.
    Ridge { relative_lambda: f64 },
    /// No parameters: `T = I`.
    Identity,
}

/// How the normal equations were solved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Solver {
    Cholesky,
    /// The Gram was ill-conditioned (rank-deficient features): truncated
    /// eigendecomposition pseudo-inverse.
    PseudoInverse,
    None,
}

#[derive(Debug, Clone)]
pub struct Fit {
    pub kind: FitKind,
    /// `dx x dy`.
    pub weight: Mat<f64>,
    pub bias: Option<Vec<f64>>,
    /// `||X T + b - Y||_F^2 / ||Y - mean(Y)||_F^2` on the fitting data (1 - R^2).
    pub relative_residual: f64,
    pub solver: Solver,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FitError {
    #[error("no rows to fit on")]
    Empty,
    #[error("identity needs equal widths, got {dx} -> {dy}")]
    Widths { dx: usize, dy: usize },
    #[error("the Gram matrix has non-finite entries (NaN/Inf activations)")]
    NonFinite,
}

/// Eigenvalues below this fraction of the largest are treated as zero: the
/// Gram is summed from f32 products, so directions weaker than f32 rounding
/// carry no information.
const RCOND: f64 = 1e-6;

/// Solves `A T = B` for symmetric positive semi-definite `A`: Cholesky when
/// `A` is well conditioned, else a truncated eigendecomposition.
fn solve_spd(a: &Mat<f64>, b: &Mat<f64>) -> (Mat<f64>, Solver) {
    if let Ok(llt) = a.llt(Side::Lower) {
        // cond(A) ~ (max L_ii / min L_ii)^2.
        let l = llt.L();
        let diag: Vec<f64> = (0..l.nrows()).map(|i| l[(i, i)].abs()).collect();
        let (lo, hi) = diag.iter().fold((f64::INFINITY, 0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        if hi > 0.0 && (lo / hi).powi(2) > RCOND {
            return (llt.solve(b), Solver::Cholesky);
        }
    }
    let Ok(evd) = a.self_adjoint_eigen(Side::Lower) else {
        return (Mat::zeros(a.nrows(), b.ncols()), Solver::PseudoInverse);
    };
    let (u, s) = (evd.U(), evd.S().column_vector());
    let top = (0..s.nrows()).map(|i| s[i]).fold(0f64, f64::max);
    // T = U diag(1/s) U^T B over the informative directions.
    let mut ut_b = u.transpose() * b;
    for i in 0..s.nrows() {
        let inv = if s[i] > RCOND * top { 1.0 / s[i] } else { 0.0 };
        for j in 0..ut_b.ncols() {
            ut_b[(i, j)] *= inv;
        }
    }
    (u * &ut_b, Solver::PseudoInverse)
}

/// `trace(A^T B)` (the Frobenius inner product).
fn inner(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
    let mut s = 0.0;
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            s += a[(i, j)] * b[(i, j)];
        }
    }
    s
}

/// Fits `Y ~ X T (+ b)` from the moments of `X` and `Y` and their cross products.
pub fn fit(kind: FitKind, x: &Moments, y: &Moments, cross: &Cross) -> Result<Fit, FitError> {
    let (dx, dy) = (x.dim(), y.dim());
    let n = x.rows;
    if n <= 0.0 {
        return Err(FitError::Empty);
    }
    let finite = |m: &Mat<f64>| (0..m.ncols()).all(|j| (0..m.nrows()).all(|i| m[(i, j)].is_finite()));
    if !finite(&x.gram) || !finite(&cross.xy) || !y.sq_norm.is_finite() {
        return Err(FitError::NonFinite);
    }
    let (mx, my) = (x.mean(), y.mean());
    let total = y.sq_norm - n * my.iter().map(|v| v * v).sum::<f64>();
    let centred = kind == FitKind::Affine;
    // The (optionally centred) normal equations.
    let mut g = x.gram.clone();
    let mut c = cross.xy.clone();
    let mut y_sq = y.sq_norm;
    if centred {
        for j in 0..dx {
            for i in 0..dx {
                g[(i, j)] -= n * mx[i] * mx[j];
            }
        }
        for j in 0..dy {
            for i in 0..dx {
                c[(i, j)] -= n * mx[i] * my[j];
            }
        }
        y_sq = total;
    }
    let (weight, solver) = match kind {
        FitKind::Identity => {
            if dx != dy {
                return Err(FitError::Widths { dx, dy });
            }
            (Mat::identity(dx, dx), Solver::None)
        }
        FitKind::Ridge { relative_lambda } => {
            let lambda = relative_lambda * (0..dx).map(|i| g[(i, i)]).sum::<f64>() / dx as f64;
            let mut reg = g.clone();
            for i in 0..dx {
                reg[(i, i)] += lambda;
            }
            solve_spd(&reg, &c)
        }
        FitKind::Linear | FitKind::Affine => solve_spd(&g, &c),
    };
    // ||X T - Y||^2 = ||Y||^2 - 2 <T, C> + <T, G T> (all centred for affine).
    let gt = &g * &weight;
    let residual = (y_sq - 2.0 * inner(&weight, &c) + inner(&weight, &gt)).max(0.0);
    let bias = centred.then(|| (0..dy).map(|j| my[j] - (0..dx).map(|i| mx[i] * weight[(i, j)]).sum::<f64>()).collect());
    let relative_residual = if total > 0.0 { residual / total } else { 0.0 };
    Ok(Fit { kind, weight, bias, relative_residual, solver })
}

impl Fit {
    /// The weight as row-major f32 (row = input feature), for graph surgery.
    pub fn weight_f32(&self) -> Vec<f32> {
        let (r, c) = (self.weight.nrows(), self.weight.ncols());
        (0..r * c).map(|k| self.weight[(k / c, k % c)] as f32).collect()
    }

    pub fn bias_f32(&self) -> Option<Vec<f32>> {
        self.bias.as_ref().map(|b| b.iter().map(|&v| v as f32).collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn noise(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// Y = X T0 + b0 + eps * noise, row-major.
    fn data(n: usize, d: usize, bias: bool, eps: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let x = noise(1, n * d);
        let t0 = noise(2, d * d);
        let b0: Vec<f32> = if bias { noise(3, d).iter().map(|v| v * 3.0).collect() } else { vec![0.0; d] };
        let e = noise(4, n * d);
        let mut y = vec![0f32; n * d];
        for r in 0..n {
            for j in 0..d {
                let v: f32 = (0..d).map(|k| x[r * d + k] * t0[k * d + j]).sum();
                y[r * d + j] = v + b0[j] + eps * e[r * d + j];
            }
        }
        (x, y, t0, b0)
    }

    fn stats(x: &[f32], y: &[f32], d: usize, chunk_rows: usize) -> (Moments, Moments, Cross) {
        let (mut mx, mut my, mut c) = (Moments::new(d), Moments::new(d), Cross::new(d, d));
        for (xc, yc) in x.chunks(chunk_rows * d).zip(y.chunks(chunk_rows * d)) {
            mx.update(xc, Par::Seq);
            my.update(yc, Par::Seq);
            c.update(xc, yc, Par::Seq);
        }
        (mx, my, c)
    }

    /// Direct (non-streaming) relative residual of a map.
    fn direct_residual(x: &[f32], y: &[f32], d: usize, f: &Fit) -> f64 {
        let n = x.len() / d;
        let mean: Vec<f64> = (0..d).map(|j| (0..n).map(|r| y[r * d + j] as f64).sum::<f64>() / n as f64).collect();
        let (mut res, mut tot) = (0.0, 0.0);
        for r in 0..n {
            for j in 0..d {
                let pred: f64 = (0..d).map(|k| x[r * d + k] as f64 * f.weight[(k, j)]).sum::<f64>()
                    + f.bias.as_ref().map_or(0.0, |b| b[j]);
                res += (pred - y[r * d + j] as f64).powi(2);
                tot += (y[r * d + j] as f64 - mean[j]).powi(2);
            }
        }
        res / tot
    }

    #[test]
    fn linear_map_is_recovered_exactly() {
        let d = 6;
        let (x, y, t0, _) = data(400, d, false, 0.0);
        let (mx, my, c) = stats(&x, &y, d, 37);
        let f = fit(FitKind::Linear, &mx, &my, &c).expect("fit");
        assert_eq!(f.solver, Solver::Cholesky);
        for k in 0..d * d {
            assert!((f.weight[(k / d, k % d)] - t0[k] as f64).abs() < 1e-4, "entry {k}");
        }
        assert!(f.relative_residual < 1e-8);
    }

    #[test]
    fn affine_recovers_the_bias_that_linear_cannot() {
        let d = 5;
        let (x, y, _, b0) = data(500, d, true, 0.0);
        let (mx, my, c) = stats(&x, &y, d, 64);
        let affine = fit(FitKind::Affine, &mx, &my, &c).expect("fit");
        let bias = affine.bias.as_ref().expect("bias");
        for j in 0..d {
            assert!((bias[j] - b0[j] as f64).abs() < 1e-4, "bias {j}: {} vs {}", bias[j], b0[j]);
        }
        assert!(affine.relative_residual < 1e-8);
        let linear = fit(FitKind::Linear, &mx, &my, &c).expect("fit");
        assert!(linear.relative_residual > 0.01, "a bias-free map cannot absorb the offset");
    }

    #[test]
    fn streamed_residuals_match_direct_computation() {
        let d = 7;
        let (x, y, _, _) = data(300, d, true, 0.5);
        let (mx, my, c) = stats(&x, &y, d, 11);
        for kind in [FitKind::Linear, FitKind::Affine, FitKind::Ridge { relative_lambda: 0.1 }] {
            let f = fit(kind, &mx, &my, &c).expect("fit");
            let direct = direct_residual(&x, &y, d, &f);
            assert!(
                (f.relative_residual - direct).abs() <= 1e-6 * direct,
                "{kind:?}: {} vs {direct}",
                f.relative_residual
            );
        }
        let id = fit(FitKind::Identity, &mx, &my, &c).expect("fit");
        let direct = direct_residual(&x, &y, d, &id);
        assert!((id.relative_residual - direct).abs() <= 1e-6 * direct);
    }

    #[test]
    fn chunking_does_not_change_the_statistics() {
        let d = 4;
        let (x, y, _, _) = data(100, d, true, 0.3);
        let (a, _, ca) = stats(&x, &y, d, 100);
        let (b, _, cb) = stats(&x, &y, d, 7);
        for i in 0..d {
            for j in 0..d {
                assert!((a.gram[(i, j)] - b.gram[(i, j)]).abs() < 1e-5 * a.gram[(i, j)].abs().max(1.0));
                assert!((ca.xy[(i, j)] - cb.xy[(i, j)]).abs() < 1e-5 * ca.xy[(i, j)].abs().max(1.0));
            }
        }
        assert_eq!(a.rows, 100.0);
    }

    #[test]
    fn singular_gram_falls_back_to_pseudo_inverse() {
        let d = 4;
        let (mut x, _, _, _) = data(200, d, false, 0.0);
        for r in 0..200 {
            x[r * d + 3] = x[r * d + 2]; // duplicate feature: rank 3
        }
        let y = x.clone();
        let (mx, my, c) = stats(&x, &y, d, 50);
        let f = fit(FitKind::Linear, &mx, &my, &c).expect("fit");
        assert_eq!(f.solver, Solver::PseudoInverse);
        assert!(f.relative_residual < 1e-6, "Y = X is still reproduced: {}", f.relative_residual);
        assert!(f.weight.norm_max() < 10.0, "no blow-up along the null direction");
    }

    #[test]
    fn non_finite_activations_are_an_error() {
        let d = 2;
        let mut mx = Moments::new(d);
        mx.update(&[1.0, f32::NAN, 0.5, 0.5], Par::Seq);
        let my = mx.clone();
        let mut c = Cross::new(d, d);
        c.update(&[1.0, f32::NAN, 0.5, 0.5], &[1.0, f32::NAN, 0.5, 0.5], Par::Seq);
        assert_eq!(fit(FitKind::Linear, &mx, &my, &c).unwrap_err(), FitError::NonFinite);
        assert_eq!(fit(FitKind::Linear, &Moments::new(d), &my, &c).unwrap_err(), FitError::Empty);
    }
}
