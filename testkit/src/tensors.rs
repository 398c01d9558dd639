//! Inputs for the models of [`crate::models`], and comparisons of outputs.

use rba_host::model::run::nd;

use crate::models::values;

/// A deterministic input of `shape` with values in [-1, 1).
pub fn random_input(shape: &[usize], seed: u64) -> nd::ArrayD<f32> {
    let n = shape.iter().product();
    nd::ArrayD::from_shape_vec(shape.to_vec(), values(seed, n, 1.0)).expect("shape")
}

pub fn max_abs_diff(a: &nd::ArrayD<f32>, b: &nd::ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// `D x D` matrix product of row-major matrices.
pub fn matmul(a: &[f32], b: &[f32], d: usize) -> Vec<f32> {
    let mut c = vec![0f32; d * d];
    for i in 0..d {
        for k in 0..d {
            let aik = a[i * d + k];
            for j in 0..d {
                c[i * d + j] += aik * b[k * d + j];
            }
        }
    }
    c
}

/// The `d x d` identity, row-major.
pub fn identity(d: usize) -> Vec<f32> {
    (0..d * d).map(|i| if i / d == i % d { 1.0 } else { 0.0 }).collect()
}
