//! NumPy `.npy` arrays (format versions 1-3, C order, little-endian): read
//! as f32 (from u8, i32, i64, f32 or f64 data) and write f32.

use std::path::Path;

use crate::model::run::nd;

#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("{path}: cannot read: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not a valid .npy file: {problem}")]
    Format { path: String, problem: String },
}

/// Reads a whole `.npy` file as an f32 array.
pub fn read_f32(path: impl AsRef<Path>) -> Result<nd::ArrayD<f32>, NpyError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| NpyError::Io { path: path.display().to_string(), source })?;
    parse_f32(&bytes, &path.display().to_string())
}

/// Parses `.npy` bytes; `origin` names the data in errors.
pub fn parse_f32(bytes: &[u8], origin: &str) -> Result<nd::ArrayD<f32>, NpyError> {
    let err = |problem: String| NpyError::Format { path: origin.to_string(), problem };
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(err("missing the \\x93NUMPY magic".into()));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(err(format!("unsupported format version {v}"))),
    };
    let header = bytes
        .get(start..start.saturating_add(header_len))
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| err("truncated or non-text header".into()))?;
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}'"))? + key.len() + 2;
        let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
        Some(rest)
    };
    let descr = field("descr")
        .and_then(|r| r.strip_prefix('\'').and_then(|r| r.split('\'').next()))
        .ok_or_else(|| err("header has no 'descr'".into()))?;
    if field("fortran_order").is_some_and(|r| r.starts_with("True")) {
        return Err(err("Fortran-ordered arrays are not supported; save with C order".into()));
    }
    let shape_text = field("shape")
        .and_then(|r| r.strip_prefix('('))
        .and_then(|r| r.split(')').next())
        .ok_or_else(|| err("header has no 'shape'".into()))?;
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| err(format!("bad dimension '{s}' in shape"))))
        .collect::<Result<Vec<usize>, _>>()?;
    let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| err("shape overflows".into()))?;
    let data = &bytes[start + header_len..];
    let width = match descr {
        "|u1" | "<u1" | "|b1" => 1,
        "<i4" | "<f4" => 4,
        "<i8" | "<f8" => 8,
        other => return Err(err(format!("unsupported dtype '{other}' (use uint8, int32, int64, float32 or float64)"))),
    };
    if data.len() != count * width {
        return Err(err(format!("shape {shape:?} needs {} data bytes, file has {}", count * width, data.len())));
    }
    let values: Vec<f32> = match descr {
        "<i4" => data.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32).collect(),
        "<f4" => data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        "<i8" => data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32).collect(),
        "<f8" => data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32).collect(),
        _ => data.iter().map(|&b| b as f32).collect(),
    };
    nd::ArrayD::from_shape_vec(shape, values).map_err(|e| err(e.to_string()))
}

/// Encodes an f32 array as `.npy` (version 1.0) bytes.
pub fn to_bytes_f32(array: &nd::ArrayD<f32>) -> Vec<u8> {
    let dims: Vec<String> = array.shape().iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend(array.iter().flat_map(|v| v.to_le_bytes()));
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn f32_round_trip_keeps_shape_and_values() {
        let a = nd::ArrayD::from_shape_vec(vec![2, 3], vec![1.0, -2.5, 3.0, 4.0, 5.5, -6.0]).expect("shape");
        let back = parse_f32(&to_bytes_f32(&a), "mem").expect("parse");
        assert_eq!(back, a);
    }

    #[test]
    fn rejects_bad_magic_and_short_data() {
        assert!(parse_f32(b"not numpy at all", "x.npy").unwrap_err().to_string().contains("x.npy"));
        let a = nd::ArrayD::from_shape_vec(vec![4], vec![1.0f32; 4]).expect("shape");
        let mut bytes = to_bytes_f32(&a);
        bytes.truncate(bytes.len() - 3);
        let e = parse_f32(&bytes, "t.npy").unwrap_err().to_string();
        assert!(e.contains("needs 16 data bytes"), "{e}");
    }
}
