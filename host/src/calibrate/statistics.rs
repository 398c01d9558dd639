//! The finished calibration statistics: f64 sums over every calibration
//! image, from which every score and fit is computed (METHOD.md,
//! "Calibration statistics"). Memory is O(boundaries^2 * D^2), independent of
//! the number of images. [`super::accumulator::Accumulator`] builds them.
//!
//! Two views of each boundary activation are summed:
//! - *token rows*: every token (or pixel) is a row of `D` features, for the
//!   least-squares fits, the all-token BR, and per-token cosines;
//! - *image rows*: one row per image, the CLS token (token 0) for `[B, T, D]`
//!   tensors and the spatial mean for `[B, C, H, W]`, for linear CKA and the
//!   CLS-token BR.

use crate::fit::{Cross, Moments};
use crate::model::blocks::{BlockMap, FeatureLayout};

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

/// Everything scores and fits need, summed over all calibration images.
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
    /// Fold statistics, for the sites given to [`super::accumulator::Accumulator::with_branches`].
    pub branches: Vec<BranchStats>,
}

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

impl Statistics {
    /// Empty statistics for the boundaries of `blocks` (shapes at batch 1),
    /// with fit statistics for spans of up to `max_span` blocks.
    pub(super) fn new(blocks: &BlockMap, max_span: usize) -> Result<Self, CaptureError> {
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
        Ok(Self { images: 0, boundaries, spans, image_cross, sample_cosine_sum, branches: Vec::new() })
    }

    /// Also accumulates fold statistics for these `(boundary, branch tensor)`
    /// sites, for every span with fit statistics that starts there.
    pub(super) fn with_branches(mut self, sites: &[(usize, String)]) -> Self {
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
        self
    }

    /// Shape and layout of the `k`-th captured tensor (boundaries, then branches).
    pub(super) fn captured(&self, k: usize) -> (&str, &[usize], FeatureLayout) {
        let n = self.boundaries.len();
        let b = &self.boundaries[if k < n { k } else { self.branches[k - n].boundary }];
        let name = if k < n { &b.name } else { &self.branches[k - n].tensor };
        (name, &b.shape, b.layout)
    }
}
