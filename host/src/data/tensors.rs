//! Already preprocessed tensors: `.npz` archives and `.npy` files with an
//! optional sibling labels file (see the module docs of [`crate::data`]).

use std::io::Read;
use std::path::{Path, PathBuf};

use super::DataError;
use crate::data::npy;
use crate::model::run::nd;

/// Array names (without `.npy`) taken as inputs, in order of preference.
pub const INPUT_NAMES: [&str; 2] = ["x", "inputs"];
/// Array names taken as labels, in order of preference.
pub const LABEL_NAMES: [&str; 2] = ["y", "labels"];

/// Inputs `[n, ...]` and optional labels (one per input).
pub struct Tensors {
    pub inputs: nd::ArrayD<f32>,
    pub labels: Option<Vec<usize>>,
    /// The labels file used, for `.npy` inputs.
    pub labels_path: Option<PathBuf>,
}

/// Reads the arrays of an `.npz` archive (stored or deflated members).
pub fn read_npz(path: &Path) -> Result<Vec<(String, nd::ArrayD<f32>)>, DataError> {
    let shown = path.display().to_string();
    let err = |problem: String| DataError::Tensors { path: shown.clone(), problem };
    let file = std::fs::File::open(path).map_err(|source| DataError::io(path, source))?;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| err(format!("not a valid .npz (zip) archive: {e}")))?;
    let mut arrays = Vec::with_capacity(archive.len());
    for i in 0..archive.len() {
        let mut member = archive.by_index(i).map_err(|e| err(format!("member {i}: {e}")))?;
        if member.is_dir() {
            continue;
        }
        let name = member.name().to_string();
        let mut bytes = Vec::with_capacity(usize::try_from(member.size()).unwrap_or(0));
        member.read_to_end(&mut bytes).map_err(|e| err(format!("member '{name}': {e}")))?;
        let array = npy::parse_f32(&bytes, &format!("{shown}[{name}]"))?;
        arrays.push((name.strip_suffix(".npy").unwrap_or(&name).to_string(), array));
    }
    Ok(arrays)
}

/// Loads an `.npz` (arrays `x`/`inputs`, optional `y`/`labels`) or an `.npy`
/// of inputs with its optional labels file.
pub fn load(path: &Path) -> Result<Tensors, DataError> {
    let shown = path.display().to_string();
    let is_npz = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("npz"));
    let (inputs, labels, labels_path) = if is_npz {
        let mut arrays = read_npz(path)?;
        let take = |arrays: &mut Vec<(String, nd::ArrayD<f32>)>, names: &[&str]| {
            names.iter().find_map(|n| arrays.iter().position(|(a, _)| a == n)).map(|i| arrays.swap_remove(i).1)
        };
        let names: Vec<String> = arrays.iter().map(|(n, _)| n.clone()).collect();
        let inputs = take(&mut arrays, &INPUT_NAMES).ok_or_else(|| DataError::Tensors {
            path: shown.clone(),
            problem: format!("has no array named 'x' or 'inputs' (arrays: {})", names.join(", ")),
        })?;
        let labels = take(&mut arrays, &LABEL_NAMES);
        (inputs, labels, None)
    } else {
        let inputs = npy::read_f32(path)?;
        match labels_file(path) {
            Some(lp) => {
                let labels = npy::read_f32(&lp)?;
                (inputs, Some(labels), Some(lp))
            }
            None => (inputs, None, None),
        }
    };
    if inputs.ndim() < 1 || inputs.shape()[0] == 0 {
        return Err(DataError::Empty { path: shown, what: "tensors (the inputs array has no samples)".into() });
    }
    let labels = match labels {
        None => None,
        Some(l) => {
            let origin = labels_path.as_ref().map_or_else(|| format!("{shown}[labels]"), |p| p.display().to_string());
            Some(to_labels(&l, inputs.shape()[0], &origin)?)
        }
    };
    Ok(Tensors { inputs, labels, labels_path })
}

/// The labels file of an `.npy` inputs file `DIR/STEM.npy`: the first that
/// exists of `DIR/STEM.labels.npy`, and `DIR/y.npy` when STEM is `x` or
/// `DIR/labels.npy` when STEM is `inputs`.
pub fn labels_file(path: &Path) -> Option<PathBuf> {
    let stem = path.file_stem()?.to_str()?;
    let dir = path.parent().unwrap_or(Path::new(""));
    let mut candidates = vec![dir.join(format!("{stem}.labels.npy"))];
    match stem {
        "x" => candidates.push(dir.join("y.npy")),
        "inputs" => candidates.push(dir.join("labels.npy")),
        _ => {}
    }
    candidates.into_iter().find(|p| p.is_file())
}

fn to_labels(l: &nd::ArrayD<f32>, n: usize, origin: &str) -> Result<Vec<usize>, DataError> {
    let err = |problem: String| DataError::Tensors { path: origin.to_string(), problem };
    if l.len() != n || l.ndim() > 2 || (l.ndim() == 2 && l.shape()[1] != 1) {
        return Err(err(format!("labels have shape {:?}; expected [{n}] (one per input)", l.shape())));
    }
    l.iter()
        .map(|&v| {
            if v >= 0.0 && v.fract() == 0.0 && v < 16_777_216.0 {
                Ok(v as usize)
            } else {
                Err(err(format!("label {v} is not a non-negative integer")))
            }
        })
        .collect()
}
