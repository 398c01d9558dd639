//! Redundancy scores from the streamed statistics (METHOD.md, "Scores").

use serde::Serialize;

use super::statistics::{pair_index, Statistics};
use crate::fit::{fit, FitKind, Moments};
use crate::fit::{Cross, Solver};

/// Scores of one candidate span `(start, end)`: blocks `start+1 ..= end`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SpanScore {
    pub start: usize,
    pub end: usize,
    pub blocks: usize,
    /// The paper's Block Redundancy over all tokens: `-mean_x ||h_e - h_s||^2`
    /// (closer to 0 = more redundant; scale-sensitive).
    pub br_all_tokens: f64,
    /// The same on the CLS token (token 0; the spatial mean for CNN maps).
    pub br_cls: f64,
    /// `1 - R^2` of the least-squares linear map `h_s -> h_e` over all tokens.
    pub linear_residual: f64,
    /// How the linear fit was solved (a pseudo-inverse means rank-deficient features).
    pub solver: Solver,
    /// Mean per-token cosine similarity of `h_s` and `h_e`.
    pub cosine: f64,
    /// Mean per-token angular distance `arccos(cos) / pi`.
    pub angular_distance: f64,
}

/// Linear CKA in feature space from moments and cross products:
/// `||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`; `None` when either side
/// does not vary over the images (e.g. the CLS token before the first block).
pub fn linear_cka(x: &Moments, y: &Moments, cross: &Cross) -> Option<f64> {
    let n = x.rows;
    let (mx, my) = (x.mean(), y.mean());
    let centred_norm_sq = |m: &Moments, mean: &[f64]| {
        let d = m.dim();
        let mut s = 0.0;
        for i in 0..d {
            for j in 0..d {
                let v = m.gram[(i, j)] - n * mean[i] * mean[j];
                s += v * v;
            }
        }
        s
    };
    let mut xy = 0.0;
    for i in 0..x.dim() {
        for j in 0..y.dim() {
            let v = cross.xy[(i, j)] - n * mx[i] * my[j];
            xy += v * v;
        }
    }
    let (sx, sy) = (centred_norm_sq(x, &mx), centred_norm_sq(y, &my));
    // Relative to the raw second moments: a constant feature leaves only rounding.
    let negligible = |centred: f64, m: &Moments| centred <= 1e-12 * m.sq_norm.powi(2);
    if negligible(sx, x) || negligible(sy, y) {
        return None;
    }
    Some(xy / (sx * sy).sqrt())
}

impl Statistics {
    /// Scores of every span with fit statistics, in (start, end) order.
    pub fn span_scores(&self) -> Vec<SpanScore> {
        let images = self.images.max(1) as f64;
        self.spans
            .iter()
            .map(|sp| {
                let (s, e) = (&self.boundaries[sp.start], &self.boundaries[sp.end]);
                let br_all = -sp.token_dist_sq / images;
                let br_cls = -sp.image_dist_sq / images;
                let (residual, solver) = match fit(FitKind::Linear, &s.tokens, &e.tokens, &sp.cross) {
                    Ok(f) => (f.relative_residual, f.solver),
                    Err(_) => (f64::NAN, Solver::None),
                };
                let rows = s.tokens.rows.max(1.0);
                SpanScore {
                    start: sp.start,
                    end: sp.end,
                    blocks: sp.end - sp.start,
                    br_all_tokens: br_all,
                    br_cls,
                    linear_residual: residual,
                    solver,
                    cosine: sp.cosine_sum / rows,
                    angular_distance: sp.angle_sum / rows,
                }
            })
            .collect()
    }

    /// Linear CKA between all boundary pairs (image rows), symmetric, 1 on
    /// the diagonal; `None` where a boundary does not vary over the images.
    pub fn cka_matrix(&self) -> Vec<Vec<Option<f64>>> {
        let n = self.boundaries.len();
        let mut m = vec![vec![Some(1.0); n]; n];
        for i in 0..n {
            for j in i + 1..n {
                let v = linear_cka(
                    &self.boundaries[i].images,
                    &self.boundaries[j].images,
                    &self.image_cross[pair_index(n, i, j)],
                );
                m[i][j] = v;
                m[j][i] = v;
            }
        }
        m
    }

    /// Mean per-image cosine between flattened activations of equal shape.
    pub fn cosine_matrix(&self) -> Vec<Vec<Option<f64>>> {
        let n = self.boundaries.len();
        let mut m = vec![vec![Some(1.0); n]; n];
        for i in 0..n {
            for j in i + 1..n {
                let v = self.sample_cosine_sum[pair_index(n, i, j)].map(|s| s / self.images.max(1) as f64);
                m[i][j] = v;
                m[j][i] = v;
            }
        }
        m
    }
}
