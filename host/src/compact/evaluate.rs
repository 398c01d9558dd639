//! How compacted models do on held-out data: accuracy, agreement with the
//! original and output cosine ([`Quality`]), and `rba evaluate`'s side-by-side
//! comparison with host latency.

use serde::Serialize;

use super::tail::{BoundaryCache, CacheOptions};
use super::CompactError;
use crate::model::run::{argmax_rows, nd, predict, predict_on, with_tract_threads, Runner, Runtime};
use crate::model::Model;
use crate::onnx::OnnxModel;

/// Held-out data and the original model's outputs on it.
pub struct HeldOut {
    pub inputs: nd::ArrayD<f32>,
    pub labels: Option<Vec<usize>>,
    pub reference: nd::Array2<f32>,
    pub batch: usize,
    /// The original model's boundary activations on these images, for
    /// tail-only selection ([`HeldOut::with_boundaries`]).
    pub cache: Option<BoundaryCache>,
    /// Why there is no cache although one was asked for.
    pub no_cache: Option<String>,
}

/// How a model does on the held-out data.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize)]
pub struct Quality {
    /// Top-1 accuracy (with labels).
    pub accuracy: Option<f64>,
    /// Top-1 agreement with the original model.
    #[serde(with = "crate::report::nan_as_null")]
    pub agreement: f64,
    /// Mean cosine between the model's and the original's outputs.
    #[serde(with = "crate::report::nan_as_null")]
    pub output_cosine: f64,
}

impl Quality {
    /// The metric selection optimises: accuracy with labels, else agreement.
    pub fn metric(&self) -> f64 {
        self.accuracy.unwrap_or(self.agreement)
    }

    /// Whether `self` beats `other`: the metric first; on a tie (small
    /// held-out sets tie often), the output that stays closer to the original.
    pub fn better_than(&self, other: &Quality) -> bool {
        (self.metric(), self.agreement, self.output_cosine) > (other.metric(), other.agreement, other.output_cosine)
    }
}

impl HeldOut {
    pub fn new(
        original: &OnnxModel,
        inputs: nd::ArrayD<f32>,
        labels: Option<Vec<usize>>,
        batch: usize,
    ) -> Result<Self, CompactError> {
        let reference = predict(original, &inputs, batch)?;
        Ok(Self { inputs, labels, reference, batch, cache: None, no_cache: None })
    }

    /// Like [`HeldOut::new`], and keeps the original model's boundary
    /// activations from the same pass (in memory within `options.budget`,
    /// else in a temporary file) so that selection can run candidates' tails
    /// only. The pass runs tract's matrix products on `threads` threads.
    pub fn with_boundaries(
        original: &Model,
        inputs: nd::ArrayD<f32>,
        labels: Option<Vec<usize>>,
        batch: usize,
        options: &CacheOptions,
        threads: usize,
    ) -> Result<Self, CompactError> {
        match with_tract_threads(threads, || super::tail::capture(original, &inputs, batch, options)) {
            Ok((reference, cache)) => Ok(Self { inputs, labels, reference, batch, cache: Some(cache), no_cache: None }),
            // Whatever stops the capture (a boundary tract cannot expose, a
            // spill file that cannot be written), selection still works
            // on whole models; a model that cannot run fails here too.
            Err(e) => Ok(Self { no_cache: Some(e.to_string()), ..Self::new(&original.onnx, inputs, labels, batch)? }),
        }
    }

    pub fn measure(&self, model: &OnnxModel) -> Result<Quality, CompactError> {
        let out = predict(model, &self.inputs, self.batch)?;
        Ok(quality(&out, &self.reference, self.labels.as_deref()))
    }

    pub fn len(&self) -> usize {
        self.reference.nrows()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Accuracy, agreement and output cosine of `out` against the reference outputs.
pub fn quality(out: &nd::Array2<f32>, reference: &nd::Array2<f32>, labels: Option<&[usize]>) -> Quality {
    let (pred, refp) = (argmax_rows(out), argmax_rows(reference));
    let n = pred.len().max(1) as f64;
    let agreement = pred.iter().zip(&refp).filter(|(a, b)| a == b).count() as f64 / n;
    let accuracy = labels.map(|l| pred.iter().zip(l).filter(|(a, b)| a == b).count() as f64 / n);
    let output_cosine = out
        .rows()
        .into_iter()
        .zip(reference.rows())
        .map(|(a, b)| {
            let (ab, aa, bb) = a.iter().zip(b.iter()).fold((0f64, 0f64, 0f64), |(ab, aa, bb), (&x, &y)| {
                (ab + x as f64 * y as f64, aa + x as f64 * x as f64, bb + y as f64 * y as f64)
            });
            if aa > 0.0 && bb > 0.0 {
                ab / (aa * bb).sqrt()
            } else {
                0.0
            }
        })
        .sum::<f64>()
        / n;
    Quality { accuracy, agreement, output_cosine }
}

/// One model's row in `rba evaluate`.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct EvalRow {
    pub model: String,
    pub accuracy_top1: Option<f64>,
    /// Only for more than 5 classes.
    pub accuracy_top5: Option<f64>,
    pub agreement: f64,
    pub output_cosine: f64,
    pub params: u64,
    pub macs: u64,
    pub file_bytes: u64,
    /// Median host latency per batch, seconds (interleaved runs).
    pub latency_median_s: f64,
    /// Measured speedup against the first model.
    pub speedup: f64,
    /// Speedup predicted from MACs against the first model.
    pub ideal_speedup: f64,
}

/// Top-k accuracy of `out` against `labels`.
pub fn top_k(out: &nd::Array2<f32>, labels: &[usize], k: usize) -> f64 {
    let hits = out
        .rows()
        .into_iter()
        .zip(labels)
        .filter(|(row, &label)| {
            let v = row[label.min(row.len().saturating_sub(1))];
            label < row.len() && row.iter().filter(|&&x| x > v).count() < k
        })
        .count();
    hits as f64 / labels.len().max(1) as f64
}

/// Evaluates models side by side on the same inputs on `runtime` (ONNX
/// Runtime's `threads`; tract's come from the caller's executor scope);
/// the first is the reference.
pub fn evaluate(
    models: &[(String, Model, u64)],
    inputs: &nd::ArrayD<f32>,
    labels: Option<&[usize]>,
    batch: usize,
    rounds: usize,
    runtime: &Runtime,
    threads: usize,
) -> Result<Vec<EvalRow>, CompactError> {
    let outputs: Vec<nd::Array2<f32>> = models
        .iter()
        .map(|(_, m, _)| predict_on(runtime, &m.onnx, inputs, batch, threads))
        .collect::<Result<_, _>>()?;
    // Latency: one batch per model, interleaved ABAB... so drift hits all alike.
    let runners: Vec<Runner> =
        models.iter().map(|(_, m, _)| Runner::on(runtime, &m.onnx, batch, &[], threads)).collect::<Result<_, _>>()?;
    let mut one = nd::ArrayD::zeros(runners[0].input_shape.clone());
    let k = inputs.shape()[0].min(runners[0].input_shape[0]);
    one.slice_axis_mut(nd::Axis(0), (0..k).into()).assign(&inputs.slice_axis(nd::Axis(0), (0..k).into()));
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); models.len()];
    for _ in 0..rounds {
        for (r, s) in runners.iter().zip(samples.iter_mut()) {
            let t = std::time::Instant::now();
            r.run(one.clone())?;
            s.push(t.elapsed().as_secs_f64());
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let medians: Vec<f64> = samples.iter_mut().map(median).collect();
    let macs: Vec<u64> =
        models.iter().map(|(_, m, _)| crate::model::cost::total_macs(m.onnx.graph(), &m.index, &m.shapes)).collect();
    Ok(models
        .iter()
        .enumerate()
        .map(|(i, (name, m, bytes))| {
            let q = quality(&outputs[i], &outputs[0], labels);
            let classes = outputs[i].ncols();
            EvalRow {
                model: name.clone(),
                accuracy_top1: q.accuracy,
                accuracy_top5: labels.filter(|_| classes > 5).map(|l| top_k(&outputs[i], l, 5)),
                agreement: q.agreement,
                output_cosine: q.output_cosine,
                params: crate::model::cost::total_params(m.onnx.graph()),
                macs: macs[i],
                file_bytes: *bytes,
                latency_median_s: medians[i],
                speedup: medians[0] / medians[i],
                ideal_speedup: macs[0] as f64 / macs[i].max(1) as f64,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_counts_agreement_and_accuracy() {
        let reference = nd::arr2(&[[1.0f32, 0.0], [0.0, 1.0], [1.0, 0.0]]);
        let out = nd::arr2(&[[2.0f32, 0.0], [1.0, 0.0], [0.5, 0.1]]);
        let q = quality(&out, &reference, Some(&[0, 1, 1]));
        assert!((q.agreement - 2.0 / 3.0).abs() < 1e-12);
        assert!((q.accuracy.expect("labels") - 1.0 / 3.0).abs() < 1e-12);
        assert!(q.output_cosine < 1.0 && q.output_cosine > 0.0);
    }
}
