//! Streaming calibration batches into [`Statistics`]: rows are buffered and
//! folded into the f64 sums one *group* of images at a time (matrix products
//! over many rows at once run several times faster than per batch; the
//! buffer's size is fixed, so memory still does not grow with the number of
//! images).
//!
//! A group is a fixed number of consecutive images ([`group_images`]), so
//! every image's rows always fall into the same f32 product chunks, whatever
//! else is captured with them: the statistics of a shard made of whole
//! groups are exactly that shard's share of a one-shot capture (METHOD.md,
//! "Calibration statistics").

use faer::Par;

use super::statistics::{boundary_layout, pair_index, Statistics};
use crate::fit::compensated;
use crate::model::blocks::{BlockMap, FeatureLayout};
use crate::model::run::nd;

pub use super::statistics::CaptureError;

/// Token rows (of boundary 0) a group holds at least, when batches are full.
pub const FLUSH_TOKEN_ROWS: usize = 2048;

/// Images per group for `batch` images per forward pass: the fewest whole
/// batches holding at least [`FLUSH_TOKEN_ROWS`] token rows of boundary 0.
/// Groups are whole batches, so a shard made of groups runs the model on
/// exactly the batches a one-shot capture runs.
pub fn group_images(blocks: &BlockMap, batch: usize) -> Result<usize, CaptureError> {
    let batch = batch.max(1);
    let (shape, _, d) = boundary_layout(blocks, 0)?;
    let tokens = (shape.iter().skip(1).product::<usize>() / d.max(1)).max(1);
    Ok(batch * FLUSH_TOKEN_ROWS.div_ceil(batch * tokens).max(1))
}

/// Statistics being accumulated; [`Accumulator::finish`] gives the finished
/// [`Statistics`].
#[derive(Debug)]
pub struct Accumulator {
    stats: Statistics,
    /// Rows waiting for the next flush, per captured tensor (boundaries
    /// first, then branches).
    pending: Vec<Views>,
    pending_images: usize,
    /// Images per flush.
    group: usize,
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

impl Accumulator {
    /// Empty statistics for the boundaries of `blocks` (shapes at batch 1),
    /// with fit statistics for spans of up to `max_span` blocks, folded in
    /// every `group` images (see [`group_images`]).
    pub fn new(blocks: &BlockMap, max_span: usize, group: usize) -> Result<Self, CaptureError> {
        let stats = Statistics::new(blocks, max_span)?;
        let pending = vec![Views::default(); stats.boundaries.len()];
        Ok(Self { stats, pending, pending_images: 0, group: group.max(1) })
    }

    /// Also accumulates fold statistics for these `(boundary, branch tensor)`
    /// sites; their activations follow the boundaries' in [`Accumulator::update`].
    pub fn with_branches(self, sites: &[(usize, String)]) -> Self {
        let stats = self.stats.with_branches(sites);
        let pending = vec![Views::default(); stats.boundaries.len() + stats.branches.len()];
        Self { stats, pending, pending_images: 0, group: self.group }
    }

    /// The tensors to capture, in the order `update` takes them.
    pub fn captured_tensors(&self) -> Vec<String> {
        let mut names: Vec<String> = self.stats.boundaries.iter().map(|b| b.name.clone()).collect();
        names.extend(self.stats.branches.iter().map(|b| b.tensor.clone()));
        names
    }

    /// Adds one batch: `activations[k]` is captured tensor `k`'s (boundaries,
    /// then branches) for `valid` real images (a padded last batch has extra
    /// rows, which are ignored). The rows are folded in whenever a group is
    /// complete, splitting the batch at the group's end if needed.
    pub fn update(&mut self, activations: &[nd::ArrayD<f32>], valid: usize, par: Par) -> Result<(), CaptureError> {
        let mut acts = Vec::with_capacity(activations.len());
        for (k, act) in activations.iter().enumerate().take(self.pending.len()) {
            let (name, shape, layout) = self.stats.captured(k);
            if act.shape()[1..] != shape[1..] {
                return Err(CaptureError::Shape {
                    name: name.to_string(),
                    got: act.shape().to_vec(),
                    expected: shape.to_vec(),
                });
            }
            let act = act.slice_axis(nd::Axis(0), (0..valid).into());
            if act.iter().any(|v| !v.is_finite()) {
                return Err(CaptureError::NonFinite(name.to_string()));
            }
            acts.push((act, layout));
        }
        let mut done = 0;
        while done < valid {
            let take = (self.group - self.pending_images).min(valid - done);
            for (buffer, (act, layout)) in self.pending.iter_mut().zip(&acts) {
                let part = act.slice_axis(nd::Axis(0), (done..done + take).into()).to_owned();
                let v = views(&part, *layout);
                buffer.tokens.extend_from_slice(&v.tokens);
                buffer.images.extend_from_slice(&v.images);
            }
            self.pending_images += take;
            self.stats.images += take;
            done += take;
            if self.pending_images == self.group {
                self.flush(par);
            }
        }
        Ok(())
    }

    /// Folds in the buffered rows and returns the finished statistics,
    /// normalized (see [`Statistics::normalize`]).
    pub fn finish(mut self, par: Par) -> Statistics {
        self.flush(par);
        self.stats.normalize();
        self.stats
    }

    /// Folds the buffered rows into the sums.
    fn flush(&mut self, par: Par) {
        if self.pending_images == 0 {
            return;
        }
        let all = std::mem::replace(
            &mut self.pending,
            vec![Views::default(); self.stats.boundaries.len() + self.stats.branches.len()],
        );
        let images = std::mem::take(&mut self.pending_images);
        for (stats, v) in self.stats.boundaries.iter_mut().zip(&all) {
            stats.tokens.update(&v.tokens, par);
            stats.images.update(&v.images, par);
        }
        for span in self.stats.spans.iter_mut() {
            let (x, y) = (&all[span.start].tokens, &all[span.end].tokens);
            span.cross.update(x, y, par);
            let d = self.stats.boundaries[span.start].tokens.dim();
            // Plain sums over the group's rows, each added once with its
            // rounding error: the terms depend on the group only.
            let (mut cos, mut angle, mut dist) = (0f64, 0f64, 0f64);
            for (a, b) in x.chunks_exact(d).zip(y.chunks_exact(d)) {
                let (c, dd) = cosine_and_distance(a, b);
                cos += c;
                angle += c.acos() / std::f64::consts::PI;
                dist += dd;
            }
            let image_dist = dist_sq(&all[span.start].images, &all[span.end].images);
            let r = &mut span.residue;
            compensated::add(&mut span.cosine_sum, &mut r.cosine_sum, cos);
            compensated::add(&mut span.angle_sum, &mut r.angle_sum, angle);
            compensated::add(&mut span.token_dist_sq, &mut r.token_dist_sq, dist);
            compensated::add(&mut span.image_dist_sq, &mut r.image_dist_sq, image_dist);
        }
        let n = self.stats.boundaries.len();
        for (k, branch) in self.stats.branches.iter_mut().enumerate() {
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
                self.stats.image_cross[k].update(&all[i].images, &all[j].images, par);
                if let Some(sum) = self.stats.sample_cosine_sum[k].as_mut() {
                    let res = &mut self.stats.sample_cosine_residue[k];
                    let per = (all[i].tokens.len() / images.max(1)).max(1);
                    let pairs = all[i].tokens.chunks_exact(per).zip(all[j].tokens.chunks_exact(per));
                    compensated::add(sum, res, pairs.map(|(a, b)| cosine(a, b)).sum());
                }
            }
        }
    }
}
