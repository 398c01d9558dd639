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

use serde::{Deserialize, Serialize};

use crate::fit::compensated;
use crate::fit::{Cross, Moments};
use crate::model::blocks::{BlockMap, FeatureLayout};

/// Statistics of one boundary tensor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BoundaryStats {
    pub name: String,
    /// Shape at batch 1.
    pub shape: Vec<usize>,
    pub layout: FeatureLayout,
    pub tokens: Moments,
    pub images: Moments,
}

/// Statistics of a candidate span `h_s -> h_e` over token rows.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// The compensation terms of the four sums above (see [`compensated`]).
    pub residue: SpanResidue,
}

/// What rounding left out of a span's scalar sums.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SpanResidue {
    pub cosine_sum: f64,
    pub angle_sum: f64,
    pub token_dist_sq: f64,
    pub image_dist_sq: f64,
}

/// Statistics for folded translators (see `fold`): the branch `m_s` that
/// ends the block producing boundary `s`, and per span end `e` the target
/// `h_e - r_s = h_e - h_s + m_s`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BranchStats {
    pub boundary: usize,
    pub tensor: String,
    pub moments: Moments,
    pub targets: Vec<FoldTarget>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FoldTarget {
    pub end: usize,
    /// Sums and norms of the target rows (no Gram: fits never read it).
    pub moments: Moments,
    /// `m_s^T (h_e - r_s)`.
    pub cross: Cross,
}

/// Everything scores and fits need, summed over all calibration images.
///
/// Every sum is an unevaluated pair (value, residue) (see [`compensated`]):
/// [`Statistics::merge`] adds two captures of disjoint image sets, and the
/// result does not depend on how the images were split.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// The compensation terms of `sample_cosine_sum` (0 where it is `None`).
    pub sample_cosine_residue: Vec<f64>,
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

/// Two statistics that cannot be merged, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the statistics were captured differently: {0}")]
pub struct MergeError(pub String);

/// Shape (at batch 1), feature layout and feature width of boundary `i`.
pub(crate) fn boundary_layout(blocks: &BlockMap, i: usize) -> Result<(Vec<usize>, FeatureLayout, usize), CaptureError> {
    let name = blocks.boundaries.get(i).cloned().unwrap_or_default();
    let (shape, layout) = match (blocks.blocks.get(i), i.checked_sub(1).and_then(|p| blocks.blocks.get(p))) {
        (Some(b), _) => (b.input_shape.clone(), b.layout),
        (None, Some(last)) => (last.output_shape.clone(), last.layout),
        (None, None) => return Err(CaptureError::Unsupported { name, shape: Vec::new() }),
    };
    let layout = match (layout, shape.len()) {
        (Some(l), 3 | 4) => l,
        _ => return Err(CaptureError::Unsupported { name, shape }),
    };
    let d = match layout {
        FeatureLayout::Last => shape[shape.len() - 1],
        FeatureLayout::ChannelsFirst => shape[1],
    };
    Ok((shape, layout, d))
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
        for i in 0..blocks.boundaries.len() {
            let (shape, layout, d) = boundary_layout(blocks, i)?;
            boundaries.push(BoundaryStats {
                name: blocks.boundaries[i].clone(),
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
                        residue: SpanResidue::default(),
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
        let sample_cosine_residue = vec![0.0; sample_cosine_sum.len()];
        Ok(Self {
            images: 0,
            boundaries,
            spans,
            image_cross,
            sample_cosine_sum,
            sample_cosine_residue,
            branches: Vec::new(),
        })
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

    /// Rounds every sum to its nearest f64, keeping the rest in the
    /// residues: what fits and scores read is then the same however the
    /// images were split and merged.
    pub fn normalize(&mut self) {
        for b in &mut self.boundaries {
            b.tokens.normalize();
            b.images.normalize();
        }
        for sp in &mut self.spans {
            sp.cross.normalize();
            let r = &mut sp.residue;
            compensated::normalize(&mut sp.cosine_sum, &mut r.cosine_sum);
            compensated::normalize(&mut sp.angle_sum, &mut r.angle_sum);
            compensated::normalize(&mut sp.token_dist_sq, &mut r.token_dist_sq);
            compensated::normalize(&mut sp.image_dist_sq, &mut r.image_dist_sq);
        }
        for c in &mut self.image_cross {
            c.normalize();
        }
        for (sum, res) in self.sample_cosine_sum.iter_mut().zip(self.sample_cosine_residue.iter_mut()) {
            if let Some(sum) = sum.as_mut() {
                compensated::normalize(sum, res);
            }
        }
        for br in &mut self.branches {
            br.moments.normalize();
            for t in &mut br.targets {
                t.moments.normalize();
                t.cross.normalize();
            }
        }
    }

    /// Whether `other` holds the same statistics (boundaries, shapes,
    /// spans, fold sites) of possibly other images; says what differs.
    pub fn check_same_layout(&self, other: &Statistics) -> Result<(), MergeError> {
        let err = |what: String| Err(MergeError(what));
        let names = |s: &Statistics| s.boundaries.iter().map(|b| b.name.clone()).collect::<Vec<_>>();
        if names(self) != names(other) {
            return err(format!("boundaries {:?} vs {:?}", names(self), names(other)));
        }
        for (a, b) in self.boundaries.iter().zip(&other.boundaries) {
            if a.shape != b.shape || a.layout != b.layout || a.tokens.dim() != b.tokens.dim() {
                return err(format!("boundary '{}' has shape {:?} vs {:?}", a.name, a.shape, b.shape));
            }
        }
        let spans = |s: &Statistics| s.spans.iter().map(|sp| (sp.start, sp.end)).collect::<Vec<_>>();
        if spans(self) != spans(other) {
            return err(format!("spans {:?} vs {:?}", spans(self), spans(other)));
        }
        let sites = |s: &Statistics| {
            s.branches
                .iter()
                .map(|b| (b.boundary, b.tensor.clone(), b.targets.iter().map(|t| t.end).collect::<Vec<_>>()))
                .collect::<Vec<_>>()
        };
        if sites(self) != sites(other) {
            return err(format!("fold sites {:?} vs {:?}", sites(self), sites(other)));
        }
        if self.image_cross.len() != other.image_cross.len()
            || self
                .sample_cosine_sum
                .iter()
                .map(Option::is_some)
                .ne(other.sample_cosine_sum.iter().map(Option::is_some))
        {
            return err("boundary pairs differ".into());
        }
        Ok(())
    }

    /// Adds the statistics of other images (a shard) to these: every sum
    /// is added with its residue and the result normalized, so merging
    /// shards gives the statistics a one-shot capture of all their images
    /// gives, whatever the order (see [`compensated`]).
    pub fn merge(&mut self, other: &Statistics) -> Result<(), MergeError> {
        self.check_same_layout(other)?;
        let shape = |e: crate::fit::ShapeMismatch| MergeError(e.to_string());
        self.images += other.images;
        for (a, b) in self.boundaries.iter_mut().zip(&other.boundaries) {
            a.tokens.merge(&b.tokens).map_err(shape)?;
            a.images.merge(&b.images).map_err(shape)?;
        }
        for (a, b) in self.spans.iter_mut().zip(&other.spans) {
            a.cross.merge(&b.cross).map_err(shape)?;
            let (r, o) = (&mut a.residue, &b.residue);
            compensated::add_pair(&mut a.cosine_sum, &mut r.cosine_sum, b.cosine_sum, o.cosine_sum);
            compensated::add_pair(&mut a.angle_sum, &mut r.angle_sum, b.angle_sum, o.angle_sum);
            compensated::add_pair(&mut a.token_dist_sq, &mut r.token_dist_sq, b.token_dist_sq, o.token_dist_sq);
            compensated::add_pair(&mut a.image_dist_sq, &mut r.image_dist_sq, b.image_dist_sq, o.image_dist_sq);
        }
        for (a, b) in self.image_cross.iter_mut().zip(&other.image_cross) {
            a.merge(b).map_err(shape)?;
        }
        let other_cos = other.sample_cosine_sum.iter().zip(&other.sample_cosine_residue);
        for ((sum, res), (o, o_res)) in
            self.sample_cosine_sum.iter_mut().zip(self.sample_cosine_residue.iter_mut()).zip(other_cos)
        {
            if let (Some(sum), Some(o)) = (sum.as_mut(), o) {
                compensated::add_pair(sum, res, *o, *o_res);
            }
        }
        for (a, b) in self.branches.iter_mut().zip(&other.branches) {
            a.moments.merge(&b.moments).map_err(shape)?;
            for (ta, tb) in a.targets.iter_mut().zip(&b.targets) {
                ta.moments.merge(&tb.moments).map_err(shape)?;
                ta.cross.merge(&tb.cross).map_err(shape)?;
            }
        }
        Ok(())
    }

    /// Every sum (values, not residues), flattened and named, in a fixed
    /// order: for comparing two captures sum by sum.
    pub fn named_sums(&self) -> Vec<(String, Vec<f64>)> {
        fn moments(out: &mut Vec<(String, Vec<f64>)>, name: String, m: &Moments) {
            out.push((format!("{name}.rows"), vec![m.rows]));
            out.push((format!("{name}.sum"), m.sum.clone()));
            out.push((format!("{name}.gram"), mat(&m.gram)));
            out.push((format!("{name}.sq_norm"), vec![m.sq_norm]));
        }
        fn mat(m: &faer::Mat<f64>) -> Vec<f64> {
            (0..m.ncols()).flat_map(|j| m.col_as_slice(j).to_vec()).collect()
        }
        let mut out = vec![("images".to_string(), vec![self.images as f64])];
        for b in &self.boundaries {
            moments(&mut out, format!("boundary {} tokens", b.name), &b.tokens);
            moments(&mut out, format!("boundary {} images", b.name), &b.images);
        }
        for sp in &self.spans {
            let name = format!("span {}..{}", sp.start, sp.end);
            out.push((format!("{name} cross"), mat(&sp.cross.xy)));
            out.push((format!("{name} cosine_sum"), vec![sp.cosine_sum]));
            out.push((format!("{name} angle_sum"), vec![sp.angle_sum]));
            out.push((format!("{name} token_dist_sq"), vec![sp.token_dist_sq]));
            out.push((format!("{name} image_dist_sq"), vec![sp.image_dist_sq]));
        }
        let n = self.boundaries.len();
        for i in 0..n {
            for j in i + 1..n {
                let k = pair_index(n, i, j);
                out.push((format!("image cross {i},{j}"), mat(&self.image_cross[k].xy)));
                if let Some(c) = self.sample_cosine_sum[k] {
                    out.push((format!("sample cosine {i},{j}"), vec![c]));
                }
            }
        }
        for br in &self.branches {
            moments(&mut out, format!("branch {}", br.boundary), &br.moments);
            for t in &br.targets {
                let name = format!("fold target {}..{}", br.boundary, t.end);
                moments(&mut out, name.clone(), &t.moments);
                out.push((format!("{name} cross"), mat(&t.cross.xy)));
            }
        }
        out
    }

    /// The longest span with statistics (0 without spans).
    pub fn max_span(&self) -> usize {
        self.spans.iter().map(|s| s.end - s.start).max().unwrap_or(0)
    }

    /// Keeps the statistics of spans of at most `max_span` blocks (and
    /// their fold targets): what a capture with that `max_span` holds.
    pub fn restrict_spans(&mut self, max_span: usize) {
        self.spans.retain(|s| s.end - s.start <= max_span);
        for b in &mut self.branches {
            let start = b.boundary;
            b.targets.retain(|t| t.end - start <= max_span);
        }
    }

    /// Drops the fold statistics: what a capture without them holds.
    pub fn drop_branches(&mut self) {
        self.branches.clear();
    }

    /// Shape and layout of the `k`-th captured tensor (boundaries, then branches).
    pub(super) fn captured(&self, k: usize) -> (&str, &[usize], FeatureLayout) {
        let n = self.boundaries.len();
        let b = &self.boundaries[if k < n { k } else { self.branches[k - n].boundary }];
        let name = if k < n { &b.name } else { &self.branches[k - n].tensor };
        (name, &b.shape, b.layout)
    }
}
