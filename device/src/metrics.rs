//! Accuracy metrics of an evaluation: top-1 accuracy against labels, and
//! agreement, max-abs-diff and cosine similarity against expected outputs.

/// Index of the largest value (the first one on ties); `None` if empty or
/// all NaN.
pub fn argmax(v: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &x) in v.iter().enumerate() {
        if x.is_nan() {
            continue;
        }
        if best.is_none_or(|(_, b)| x > b) {
            best = Some((i, x));
        }
    }
    best.map(|(i, _)| i)
}

/// Cosine similarity in f64; 1 for two zero vectors, 0 if only one is zero.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    match (na == 0.0, nb == 0.0) {
        (true, true) => 1.0,
        (true, false) | (false, true) => 0.0,
        _ => dot / (na.sqrt() * nb.sqrt()),
    }
}

/// Accumulates per-sample results.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    pub samples: u64,
    labelled: u64,
    correct: u64,
    compared: u64,
    agree: u64,
    max_abs_diff: f32,
    cosine_sum: f64,
}

impl Metrics {
    /// One sample: its outputs (one flat vector per model output), its label
    /// and its expected outputs, if any. The first output is the one whose
    /// arg-max is the predicted class; the cosine is over all outputs
    /// concatenated.
    pub fn add(&mut self, outputs: &[Vec<f32>], label: Option<u32>, expected: Option<&[Vec<f32>]>) {
        self.samples += 1;
        let first = outputs.first().map(Vec::as_slice).unwrap_or_default();
        let predicted = argmax(first);
        if let Some(l) = label {
            self.labelled += 1;
            if predicted.is_some_and(|p| p as u64 == u64::from(l)) {
                self.correct += 1;
            }
        }
        if let Some(exp) = expected {
            self.compared += 1;
            let exp_first = exp.first().map(Vec::as_slice).unwrap_or_default();
            if predicted.is_some() && predicted == argmax(exp_first) {
                self.agree += 1;
            }
            let (mut all_out, mut all_exp) = (Vec::new(), Vec::new());
            for (o, e) in outputs.iter().zip(exp) {
                for (&x, &y) in o.iter().zip(e) {
                    let d = (x - y).abs();
                    // NaN counts as an infinite difference.
                    self.max_abs_diff = self.max_abs_diff.max(if d.is_nan() { f32::INFINITY } else { d });
                }
                all_out.extend_from_slice(o);
                all_exp.extend_from_slice(e);
            }
            self.cosine_sum += cosine(&all_out, &all_exp);
        }
    }

    pub fn top1_accuracy(&self) -> Option<f64> {
        (self.labelled > 0).then(|| self.correct as f64 / self.labelled as f64)
    }

    pub fn top1_agreement(&self) -> Option<f64> {
        (self.compared > 0).then(|| self.agree as f64 / self.compared as f64)
    }

    pub fn max_abs_diff(&self) -> Option<f32> {
        (self.compared > 0).then_some(self.max_abs_diff)
    }

    pub fn mean_cosine(&self) -> Option<f64> {
        (self.compared > 0).then(|| self.cosine_sum / self.compared as f64)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn argmax_and_cosine() {
        assert_eq!(argmax(&[0.1, 0.7, 0.7, 0.2]), Some(1));
        assert_eq!(argmax(&[f32::NAN, -1.0, -2.0]), Some(1));
        assert_eq!(argmax(&[]), None);
        assert!((cosine(&[1.0, 0.0], &[0.0, 1.0])).abs() < 1e-12);
        assert!((cosine(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-12);
        // (1,1).(1,0) / (sqrt2 * 1) = 0.70710678
        assert!((cosine(&[1.0, 1.0], &[1.0, 0.0]) - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-12);
        assert_eq!(cosine(&[0.0], &[0.0]), 1.0);
        assert_eq!(cosine(&[0.0], &[1.0]), 0.0);
    }

    #[test]
    fn hand_computed_metrics() {
        let mut m = Metrics::default();
        // Sample 1: predicts 1, label 1, expected predicts 1; identical outputs.
        m.add(&[vec![0.1, 0.9]], Some(1), Some(&[vec![0.1, 0.9]]));
        // Sample 2: predicts 0, label 1, expected predicts 1; diff 0.5 at both.
        // cos((0.6,0.4),(0.1,0.9)) = (0.06+0.36)/(sqrt(0.52)*sqrt(0.82)) = 0.6433
        m.add(&[vec![0.6, 0.4]], Some(1), Some(&[vec![0.1, 0.9]]));
        assert_eq!(m.samples, 2);
        assert_eq!(m.top1_accuracy(), Some(0.5));
        assert_eq!(m.top1_agreement(), Some(0.5));
        assert!((m.max_abs_diff().unwrap() - 0.5).abs() < 1e-6);
        let c2 = 0.42 / (0.52f64.sqrt() * 0.82f64.sqrt());
        assert!((m.mean_cosine().unwrap() - (1.0 + c2) / 2.0).abs() < 1e-6);
        let mut none = Metrics::default();
        none.add(&[vec![1.0]], None, None);
        assert_eq!((none.top1_accuracy(), none.top1_agreement(), none.max_abs_diff()), (None, None, None));
    }
}
