//! Evaluation bundles: inputs and the answers to compare against, uploaded
//! like a model (`ArtifactKind::EvalBundle`) and referenced by name.
//!
//! File layout: `b"RBAE"`, format version (u16 LE), then the postcard
//! encoding of [`EvalBundle`].

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::message::Bytes;

pub const BUNDLE_MAGIC: [u8; 4] = *b"RBAE";
pub const BUNDLE_VERSION: u16 = 1;

/// An f32 tensor: row-major, little-endian bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorF32 {
    /// Model input/output name, if the producer knows it.
    pub name: Option<String>,
    pub shape: Vec<u64>,
    /// `4 * product(shape)` bytes.
    pub data: Bytes,
}

impl TensorF32 {
    pub fn from_f32(name: Option<String>, shape: Vec<u64>, values: &[f32]) -> Self {
        let mut data = Vec::with_capacity(values.len() * 4);
        for v in values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        TensorF32 { name, shape, data: Bytes(data) }
    }

    /// Element count from the shape; `None` on overflow.
    pub fn element_count(&self) -> Option<u64> {
        self.shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
    }

    pub fn to_f32_vec(&self) -> Vec<f32> {
        self.data.0.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }

    /// Values of sample `i` along the first axis.
    pub fn sample_f32(&self, i: u64) -> Option<Vec<f32>> {
        let n = *self.shape.first()?;
        if i >= n {
            return None;
        }
        let per = usize::try_from(self.element_count()? / n).ok()?;
        let start = usize::try_from(i).ok()?.checked_mul(per)?.checked_mul(4)?;
        let bytes = self.data.0.get(start..start + per * 4)?;
        Some(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }
}

/// `n` samples: the first axis of every tensor is the sample axis.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalBundle {
    /// One tensor per model input.
    pub inputs: Vec<TensorF32>,
    /// Class index per sample, for top-1 accuracy.
    pub labels: Option<Vec<u32>>,
    /// One tensor per model output (e.g. the reference model's), for
    /// agreement, max abs diff and cosine similarity.
    pub expected: Option<Vec<TensorF32>>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("not an rba eval bundle (bad magic)")]
    Magic,
    #[error("eval bundle format {0} is not supported (this build reads {BUNDLE_VERSION})")]
    Version(u16),
    #[error("undecodable eval bundle: {0}")]
    Decode(postcard::Error),
    #[error("invalid eval bundle: {0}")]
    Invalid(&'static str),
}

impl EvalBundle {
    /// Number of samples (first axis of the first input).
    pub fn num_samples(&self) -> u64 {
        self.inputs.first().and_then(|t| t.shape.first()).copied().unwrap_or(0)
    }

    /// Checks shapes against data lengths and sample counts.
    pub fn validate(&self) -> Result<(), BundleError> {
        let n = self.num_samples();
        if self.inputs.is_empty() {
            return Err(BundleError::Invalid("no inputs"));
        }
        let tensors = self.inputs.iter().chain(self.expected.iter().flatten());
        for t in tensors {
            if t.shape.first() != Some(&n) {
                return Err(BundleError::Invalid("tensors disagree on the sample count"));
            }
            let bytes =
                t.element_count().and_then(|c| c.checked_mul(4)).ok_or(BundleError::Invalid("shape overflows"))?;
            if bytes != t.data.0.len() as u64 {
                return Err(BundleError::Invalid("data length does not match the shape"));
            }
        }
        if let Some(l) = &self.labels {
            if l.len() as u64 != n {
                return Err(BundleError::Invalid("label count differs from the sample count"));
            }
        }
        Ok(())
    }

    pub fn encode(&self) -> Result<Vec<u8>, BundleError> {
        let mut out = Vec::new();
        out.extend_from_slice(&BUNDLE_MAGIC);
        out.extend_from_slice(&BUNDLE_VERSION.to_le_bytes());
        postcard::to_extend(self, out).map_err(BundleError::Decode)
    }

    /// Decodes and validates.
    pub fn decode(bytes: &[u8]) -> Result<Self, BundleError> {
        if bytes.len() < 6 || bytes[..4] != BUNDLE_MAGIC {
            return Err(BundleError::Magic);
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != BUNDLE_VERSION {
            return Err(BundleError::Version(version));
        }
        let bundle: EvalBundle = match postcard::take_from_bytes(&bytes[6..]) {
            Ok((b, [])) => b,
            Ok(_) => return Err(BundleError::Invalid("trailing bytes")),
            Err(e) => return Err(BundleError::Decode(e)),
        };
        bundle.validate()?;
        Ok(bundle)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> EvalBundle {
        EvalBundle {
            inputs: alloc::vec![TensorF32::from_f32(
                Some("x".into()),
                alloc::vec![2, 3],
                &[1.0, 2.0, 3.0, 4.0, 5.0, 6.5]
            )],
            labels: Some(alloc::vec![1, 0]),
            expected: Some(alloc::vec![TensorF32::from_f32(None, alloc::vec![2, 2], &[0.1, 0.9, 0.8, 0.2])]),
        }
    }

    #[test]
    fn round_trip_and_samples() {
        let b = sample();
        let bytes = b.encode().unwrap();
        assert_eq!(&bytes[..6], b"RBAE\x01\x00");
        let d = EvalBundle::decode(&bytes).unwrap();
        assert_eq!(d, b);
        assert_eq!(d.num_samples(), 2);
        assert_eq!(d.inputs[0].sample_f32(1).unwrap(), [4.0, 5.0, 6.5]);
        assert_eq!(d.inputs[0].sample_f32(2), None);
    }

    #[test]
    fn rejects_bad_bundles() {
        let mut b = sample();
        b.labels = Some(alloc::vec![1]);
        assert!(matches!(EvalBundle::decode(&b.encode().unwrap()), Err(BundleError::Invalid(_))));
        let mut b = sample();
        b.inputs[0].shape = alloc::vec![2, 4];
        assert!(matches!(EvalBundle::decode(&b.encode().unwrap()), Err(BundleError::Invalid(_))));
        let mut bytes = sample().encode().unwrap();
        bytes[4] = 9;
        assert_eq!(EvalBundle::decode(&bytes), Err(BundleError::Version(9)));
        assert_eq!(EvalBundle::decode(b"nope"), Err(BundleError::Magic));
        bytes[4] = 1;
        bytes.push(0);
        assert!(EvalBundle::decode(&bytes).is_err());
    }
}
