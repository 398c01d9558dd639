//! Capture: run the model with its boundary tensors exposed as extra outputs
//! and stream every batch into fixed-size statistics (METHOD.md, "Scores").
//! Memory is O(boundaries^2 * D^2), independent of the number of images.
//!
//! Two views of each boundary activation are kept:
//! - *token rows*: every token (or pixel) is a row of `D` features, for the
//!   least-squares fits, the all-token BR, and per-token cosines;
//! - *image rows*: one row per image, the CLS token (token 0) for `[B, T, D]`
//!   tensors and the spatial mean for `[B, C, H, W]`, for linear CKA and the
//!   CLS-token BR.

use faer::Par;

use crate::blocks::{BlockMap, FeatureLayout};
use crate::fit::{Cross, Moments};
use crate::runtime::nd;

/// Statistics of one boundary tensor.
#[derive(Debug, Clone)]
pub struct BoundaryStats {
    pub name: String,
    /// Shape at batch 1.
    pub shape: Vec<usize>,
    pub layout: FeatureLayout,
    pub tokens: Moments,
    pub images: Moments,
}

/// Statistics of a candidate span `h_s -> h_e` over token rows.
#[derive(Debug, Clone)]
pub struct SpanStats {
    pub start: usize,
    pub end: usize,
    pub cross: Cross,
    /// Sum over tokens of cos(h_s, h_e) and of arccos(cos) / pi.
    pub cosine_sum: f64,
    pub angle_sum: f64,
    /// Sum over tokens of ||h_e - h_s||^2, and the same over image rows
    /// (CLS token or spatial mean): the paper's BR, accumulated directly
    /// rather than from the Gram traces, where it would cancel badly.
    pub token_dist_sq: f64,
    pub image_dist_sq: f64,
}

/// Statistics for folded translators (see `fold`): the branch `m_s` that
/// ends the block producing boundary `s`, and per span end `e` the target
/// `h_e - r_s = h_e - h_s + m_s`.
#[derive(Debug, Clone)]
pub struct BranchStats {
    pub boundary: usize,
    pub tensor: String,
    pub moments: Moments,
    pub targets: Vec<FoldTarget>,
}

#[derive(Debug, Clone)]
pub struct FoldTarget {
    pub end: usize,
    /// Sums and norms of the target rows (no Gram: fits never read it).
    pub moments: Moments,
    /// `m_s^T (h_e - r_s)`.
    pub cross: Cross,
}

/// Everything `analyze` needs, accumulated over all calibration images.
#[derive(Debug, Clone)]
pub struct Statistics {
    pub images: usize,
    pub boundaries: Vec<BoundaryStats>,
    /// Spans of up to `max_span` blocks between boundaries of equal shape.
    pub spans: Vec<SpanStats>,
    /// Image-row cross products for every boundary pair `i < j`, indexed by
    /// `pair_index(i, j)`.
    pub image_cross: Vec<Cross>,
    /// Sum over images of the cosine between the flattened activations, for
    /// pairs of equal shape (`None` otherwise).
    pub sample_cosine_sum: Vec<Option<f64>>,
    /// Fold statistics, for the boundaries given to [`Statistics::with_branches`].
    pub branches: Vec<BranchStats>,
    /// Rows waiting for the next flush, per boundary: matrix products over a
    /// few thousand rows at once run several times faster than per batch,
    /// and the buffer's size is fixed, so memory still does not grow with the
    /// number of images. Boundaries first, then branches.
    pending: Vec<Views>,
    pending_images: usize,
}

/// Token rows buffered before the statistics are updated.
const FLUSH_TOKEN_ROWS: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("boundary '{name}' has shape {shape:?}; only [B, T, D] and [B, C, H, W] tensors can be analysed")]
    Unsupported { name: String, shape: Vec<usize> },
    #[error("boundary '{0}' produced NaN or Inf activations")]
    NonFinite(String),
    #[error("boundary '{name}' has shape {got:?} in a batch, expected {expected:?}")]
    Shape { name: String, got: Vec<usize>, expected: Vec<usize> },
}

/// Index of pair `(i, j)`, `i < j`, in a flat upper-triangular list over `n` items.
pub fn pair_index(n: usize, i: usize, j: usize) -> usize {
    i * n - i * (i + 1) / 2 + (j - i - 1)
}

/// One boundary activation for a batch, rearranged for the statistics.
#[derive(Debug, Clone, Default)]
struct Views {
    /// `(batch * tokens) x d`, row-major.
    tokens: Vec<f32>,
    /// `batch x d`, row-major.
    images: Vec<f32>,
}

fn views(activation: &nd::ArrayD<f32>, layout: FeatureLayout) -> Views {
    let shape = activation.shape();
    let batch = shape[0];
    let (tokens, d) = match (layout, shape.len()) {
        (FeatureLayout::ChannelsFirst, 4) => {
            // [B, C, H, W] -> [B, H, W, C] rows.
            let c = shape[1];
            let rows = activation.view().permuted_axes(vec![0, 2, 3, 1]);
            (rows.as_standard_layout().iter().copied().collect::<Vec<f32>>(), c)
        }
        _ => {
            let d = *shape.last().unwrap_or(&1);
            (activation.as_standard_layout().iter().copied().collect(), d)
        }
    };
    let per_image = tokens.len() / batch.max(1) / d.max(1);
    let mut images = vec![0f32; batch * d];
    for b in 0..batch {
        let image = &tokens[b * per_image * d..(b + 1) * per_image * d];
        let row = &mut images[b * d..(b + 1) * d];
        match layout {
            // The CLS token.
            FeatureLayout::Last if shape.len() == 3 => row.copy_from_slice(&image[..d]),
            // Spatial (or token) mean.
            _ => {
                for t in image.chunks_exact(d) {
                    for (r, v) in row.iter_mut().zip(t) {
                        *r += v / per_image as f32;
                    }
                }
            }
        }
    }
    Views { tokens, images }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    cosine_and_distance(a, b).0
}

fn dist_sq(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum()
}

/// Cosine and squared distance of two vectors, in f64.
fn cosine_and_distance(a: &[f32], b: &[f32]) -> (f64, f64) {
    let (mut ab, mut aa, mut bb, mut dd) = (0f64, 0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
        dd += (x - y) * (x - y);
    }
    (cosine_from(ab, aa, bb), dd)
}

fn cosine_from(ab: f64, aa: f64, bb: f64) -> f64 {
    if aa == 0.0 || bb == 0.0 {
        return if aa == bb { 1.0 } else { 0.0 };
    }
    (ab / (aa.sqrt() * bb.sqrt())).clamp(-1.0, 1.0)
}

impl Statistics {
    /// Empty statistics for the boundaries of `blocks` (shapes at batch 1),
    /// with fit statistics for spans of up to `max_span` blocks.
    pub fn new(blocks: &BlockMap, max_span: usize) -> Result<Self, CaptureError> {
        let mut boundaries = Vec::new();
        for (i, name) in blocks.boundaries.iter().enumerate() {
            let (shape, layout) = match blocks.blocks.get(i) {
                Some(b) => (b.input_shape.clone(), b.layout),
                None => {
                    let last = &blocks.blocks[i - 1];
                    (last.output_shape.clone(), last.layout)
                }
            };
            let layout = match (layout, shape.len()) {
                (Some(l), 3 | 4) => l,
                _ => return Err(CaptureError::Unsupported { name: name.clone(), shape }),
            };
            let d = match layout {
                FeatureLayout::Last => shape[shape.len() - 1],
                FeatureLayout::ChannelsFirst => shape[1],
            };
            boundaries.push(BoundaryStats {
                name: name.clone(),
                shape,
                layout,
                tokens: Moments::new(d),
                images: Moments::new(d),
            });
        }
        let n = boundaries.len();
        let mut spans = Vec::new();
        for s in 0..n {
            for e in s + 1..n.min(s + max_span + 1) {
                if boundaries[s].shape == boundaries[e].shape {
                    let d = boundaries[s].tokens.dim();
                    spans.push(SpanStats {
                        start: s,
                        end: e,
                        cross: Cross::new(d, d),
                        cosine_sum: 0.0,
                        angle_sum: 0.0,
                        token_dist_sq: 0.0,
                        image_dist_sq: 0.0,
                    });
                }
            }
        }
        let mut image_cross = Vec::new();
        let mut sample_cosine_sum = Vec::new();
        for i in 0..n {
            for j in i + 1..n {
                image_cross.push(Cross::new(boundaries[i].images.dim(), boundaries[j].images.dim()));
                sample_cosine_sum.push((boundaries[i].shape == boundaries[j].shape).then_some(0.0));
            }
        }
        let pending = vec![Views::default(); n];
        Ok(Self {
            images: 0,
            boundaries,
            spans,
            image_cross,
            sample_cosine_sum,
            branches: Vec::new(),
            pending,
            pending_images: 0,
        })
    }

    /// Also accumulates fold statistics for these `(boundary, branch tensor)`
    /// sites, for every span with fit statistics that starts there. Their
    /// activations follow the boundaries' in [`Statistics::update`].
    pub fn with_branches(mut self, sites: &[(usize, String)]) -> Self {
        for (s, tensor) in sites {
            let d = self.boundaries[*s].tokens.dim();
            let targets = self
                .spans
                .iter()
                .filter(|sp| sp.start == *s)
                .map(|sp| FoldTarget { end: sp.end, moments: Moments::new(d), cross: Cross::new(d, d) })
                .collect();
            self.branches.push(BranchStats { boundary: *s, tensor: tensor.clone(), moments: Moments::new(d), targets });
        }
        self.pending = vec![Views::default(); self.boundaries.len() + self.branches.len()];
        self
    }

    /// Shape and layout of the `k`-th captured tensor (boundaries, then branches).
    fn captured(&self, k: usize) -> (&str, &[usize], FeatureLayout) {
        let n = self.boundaries.len();
        let b = &self.boundaries[if k < n { k } else { self.branches[k - n].boundary }];
        let name = if k < n { &b.name } else { &self.branches[k - n].tensor };
        (name, &b.shape, b.layout)
    }

    /// Adds one batch: `activations[b]` is boundary `b`'s tensor for `valid`
    /// real images (a padded last batch has extra rows, which are ignored).
    /// Rows are buffered; [`Statistics::flush`] folds in the remainder.
    pub fn update(&mut self, activations: &[nd::ArrayD<f32>], valid: usize, par: Par) -> Result<(), CaptureError> {
        let mut all = Vec::with_capacity(activations.len());
        for (k, act) in activations.iter().enumerate().take(self.pending.len()) {
            let (name, shape, layout) = self.captured(k);
            if act.shape()[1..] != shape[1..] {
                return Err(CaptureError::Shape {
                    name: name.to_string(),
                    got: act.shape().to_vec(),
                    expected: shape.to_vec(),
                });
            }
            let act = act.slice_axis(nd::Axis(0), (0..valid).into()).to_owned();
            if act.iter().any(|v| !v.is_finite()) {
                return Err(CaptureError::NonFinite(name.to_string()));
            }
            all.push(views(&act, layout));
        }
        for (buffer, v) in self.pending.iter_mut().zip(all) {
            buffer.tokens.extend_from_slice(&v.tokens);
            buffer.images.extend_from_slice(&v.images);
        }
        self.pending_images += valid;
        let rows = self.pending.first().map_or(0, |b| b.tokens.len() / self.boundaries[0].tokens.dim().max(1));
        if rows >= FLUSH_TOKEN_ROWS {
            self.flush(par);
        }
        self.images += valid;
        Ok(())
    }

    /// Folds the buffered rows into the statistics; call after the last
    /// `update` (capture does) before reading any score.
    pub fn flush(&mut self, par: Par) {
        if self.pending_images == 0 {
            return;
        }
        let all =
            std::mem::replace(&mut self.pending, vec![Views::default(); self.boundaries.len() + self.branches.len()]);
        let images = std::mem::take(&mut self.pending_images);
        for (stats, v) in self.boundaries.iter_mut().zip(&all) {
            stats.tokens.update(&v.tokens, par);
            stats.images.update(&v.images, par);
        }
        for span in self.spans.iter_mut() {
            let (x, y) = (&all[span.start].tokens, &all[span.end].tokens);
            span.cross.update(x, y, par);
            let d = self.boundaries[span.start].tokens.dim();
            for (a, b) in x.chunks_exact(d).zip(y.chunks_exact(d)) {
                let (c, dd) = cosine_and_distance(a, b);
                span.cosine_sum += c;
                span.angle_sum += c.acos() / std::f64::consts::PI;
                span.token_dist_sq += dd;
            }
            span.image_dist_sq += dist_sq(&all[span.start].images, &all[span.end].images);
        }
        let n = self.boundaries.len();
        for (k, branch) in self.branches.iter_mut().enumerate() {
            let m = &all[n + k].tokens;
            let h_s = &all[branch.boundary].tokens;
            branch.moments.update(m, par);
            for target in branch.targets.iter_mut() {
                let h_e = &all[target.end].tokens;
                let y: Vec<f32> = h_e.iter().zip(h_s).zip(m).map(|((e, s), m)| e - s + m).collect();
                target.cross.update(m, &y, par);
                target.moments.update_target(&y);
            }
        }
        for i in 0..n {
            for j in i + 1..n {
                let k = pair_index(n, i, j);
                self.image_cross[k].update(&all[i].images, &all[j].images, par);
                if let Some(sum) = self.sample_cosine_sum[k].as_mut() {
                    let per = all[i].tokens.len() / images.max(1);
                    for (a, b) in all[i].tokens.chunks_exact(per).zip(all[j].tokens.chunks_exact(per)) {
                        *sum += cosine(a, b);
                    }
                }
            }
        }
    }
}
