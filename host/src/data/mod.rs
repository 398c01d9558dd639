//! Calibration and evaluation data: where images come from, how they become
//! model inputs, and how they are split.
//!
//! # Data specs ([`Dataset::open`])
//!
//! - `demo`, `demo:train`, `demo:val`, `demo:test`: the embedded digits (all
//!   1797, or one committed split). [`Dataset::calibration_split`] on `demo`
//!   uses the committed splits: calibration = train, held-out = val (and
//!   [`DemoSplits`] adds report = test).
//! - A directory with sub-folders: an **ImageFolder**, one sub-folder per class.
//!   Class indices are the sorted sub-folder names (byte order); images are
//!   found recursively inside each class folder. A class folder without images
//!   is an **error** (dropping it would silently shift every later class
//!   index); loose images next to class folders are an error as well. Hidden
//!   entries (names starting with `.`) are ignored.
//! - A directory without sub-folders: unlabeled images.
//! - A `.npz` file: already preprocessed inputs in array `x` (or `inputs`),
//!   optional integer labels in `y` (or `labels`), one per input. Both
//!   `np.savez` and `np.savez_compressed` archives work.
//! - A `.npy` file `DIR/STEM.npy`: already preprocessed inputs; labels are
//!   read from `DIR/STEM.labels.npy` if it exists, or `DIR/y.npy` for
//!   `x.npy`, or `DIR/labels.npy` for `inputs.npy`.
//!
//! Images are `.png`, `.jpg` or `.jpeg` files (any case); other files are
//! ignored. Paths are sorted, so the order is deterministic. Images are
//! decoded lazily, one batch at a time; `.npy`/`.npz` tensors are read whole
//! (as f32) when the dataset is opened. Tensors are used as they are: the
//! preprocessing steps do not apply, but their per-sample shape must match the
//! model input.
//!
//! Grayscale files (with or without alpha) decode to 1 channel, others to RGB
//! (alpha dropped); 16-bit files are reduced to 8 bits, so raw values are
//! 0..=255 and the default scale is 1/255. The embedded digits are 1-channel
//! 8x8 images with raw values 0..=16 (the demo models' metadata scales by 1/16).
//!
//! # Subsets and splits
//!
//! [`Dataset::subset`] keeps the first `samples` items, or with a seed a
//! seeded random choice of them (kept in dataset order). [`Dataset::split`]
//! divides a dataset into two disjoint, deterministic parts. The shuffle is a
//! splitmix64-driven Fisher-Yates ([`shuffle`]), stable across platforms and
//! versions; it is not cryptographic.

pub mod npy;
pub mod preprocess;
pub mod tensors;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use preprocess::{Hw, Layout, Preprocess, PreprocessOptions, PreprocessSpec, RawImage, Resize};

use crate::data::npy::NpyError;
use rba_protocol::rng::splitmix64;

use crate::demo::{Digits, Split};
use crate::model::run::nd;

/// Image file extensions (compared case-insensitively).
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: cannot read: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: no {what} found")]
    Empty { path: String, what: String },
    #[error(
        "{path}: class folder has no images (.png/.jpg/.jpeg); remove it or add images \
         (class indices come from all sub-folders)"
    )]
    EmptyClass { path: String },
    #[error("{path}: has both class sub-folders and loose images ({example}); move the images into class folders")]
    MixedFolder { path: String, example: String },
    #[error("{path}: cannot decode image: {reason}")]
    Image { path: String, reason: String },
    #[error(
        "{path}: image is {got} after resizing/cropping but {want} is needed; \
         give a resize rule (--size, or --resize-shorter with --crop)"
    )]
    ImageSize { path: String, got: Hw, want: Hw },
    #[error(
        "{path}: image is {got} but {first_path} is {first}; images of mixed sizes need a resize rule \
         (--size, or --resize-shorter with --crop)"
    )]
    MixedSizes { path: String, got: Hw, first_path: String, first: Hw },
    #[error("{path}: image is {size}, smaller than the center crop {crop}")]
    TooSmall { path: String, size: Hw, crop: Hw },
    #[error("preprocessing produces inputs of shape {produced:?} ({detail}) but the model input is {model:?}")]
    ShapeMismatch { produced: Vec<usize>, model: Vec<usize>, detail: String },
    #[error("{path}: samples have shape {got:?} but the model needs {want:?} per sample")]
    TensorShape { path: String, got: Vec<usize>, want: Vec<usize> },
    #[error("{path}: not valid tensor data: {problem}")]
    Tensors { path: String, problem: String },
    #[error(transparent)]
    Npy(#[from] NpyError),
    #[error("{origin}: bad preprocessing configuration: {problem}")]
    Config { origin: String, problem: String },
    #[error(
        "{source_name}: labels are needed but this data has none \
         (use an ImageFolder, a .npz with 'y'/'labels', or a labels file next to the .npy)"
    )]
    MissingLabels { source_name: String },
    #[error("{spec}: {problem}")]
    Spec { spec: String, problem: String },
    #[error("cannot split {n} samples: {problem}")]
    Split { n: usize, problem: String },
}

impl DataError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        DataError::Io { path: path.display().to_string(), source }
    }
}

/// Deterministic Fisher-Yates shuffle driven by splitmix64(`seed`).
pub fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed;
    for i in (1..items.len()).rev() {
        // Multiply-shift maps the 64-bit value onto 0..=i (bias < 2^-40 here).
        let j = ((splitmix64(&mut state) as u128 * (i as u128 + 1)) >> 64) as usize;
        items.swap(i, j);
    }
}

/// How much of a dataset to hold out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Holdout {
    /// A fraction in (0, 1) of the samples (rounded, at least 1, at most n - 1).
    Fraction(f64),
    /// This many samples.
    Count(usize),
}

impl std::fmt::Display for Holdout {
    /// As `--holdout` takes it: `0.2` or `100`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holdout::Fraction(x) => write!(f, "{x}"),
            Holdout::Count(n) => write!(f, "{n}"),
        }
    }
}

impl std::str::FromStr for Holdout {
    type Err = String;
    /// `0.2` or `20%` is a fraction, `100` a count.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = || format!("'{s}' is neither a fraction (0.2, 20%) nor a count (100)");
        if let Some(p) = s.strip_suffix('%') {
            return p.trim().parse::<f64>().map(|p| Holdout::Fraction(p / 100.0)).map_err(|_| bad());
        }
        if let Ok(n) = s.parse::<usize>() {
            return Ok(Holdout::Count(n));
        }
        s.parse::<f64>().map(Holdout::Fraction).map_err(|_| bad())
    }
}

/// Splits `0..n` into (calibration, held-out), disjoint and together all of
/// `0..n`, each ascending; which indices are held out depends only on `n`,
/// `holdout` and `seed`. Both parts must be non-empty.
pub fn split_indices(n: usize, holdout: Holdout, seed: u64) -> Result<(Vec<usize>, Vec<usize>), DataError> {
    let err = |problem: String| DataError::Split { n, problem };
    if n < 2 {
        return Err(err("need at least 2 samples for a calibration and a held-out set".into()));
    }
    let k = match holdout {
        Holdout::Fraction(f) if f > 0.0 && f < 1.0 => ((n as f64 * f).round() as usize).clamp(1, n.saturating_sub(1)),
        Holdout::Fraction(f) => return Err(err(format!("held-out fraction {f} is not between 0 and 1"))),
        Holdout::Count(k) => k,
    };
    if k == 0 || k >= n {
        return Err(err(format!("holding out {k} would leave an empty calibration or held-out set")));
    }
    let mut order: Vec<usize> = (0..n).collect();
    shuffle(&mut order, seed);
    let mut held = order[..k].to_vec();
    let mut calib = order[k..].to_vec();
    held.sort_unstable();
    calib.sort_unstable();
    Ok((calib, held))
}

enum Source {
    Folder { root: PathBuf, files: Vec<PathBuf>, labels: Option<Vec<usize>>, classes: Option<Vec<String>> },
    Tensors { path: PathBuf, inputs: nd::ArrayD<f32>, labels: Option<Vec<usize>> },
    Demo { digits: Digits, labels: Vec<usize> },
}

/// A dataset view: a shared source and the (ordered) items of it in use.
/// Cloning and splitting are cheap; nothing is decoded until batches are read.
#[derive(Clone)]
pub struct Dataset {
    source: Arc<Source>,
    items: Vec<usize>,
    /// Set for the whole embedded digits set (spec `demo`).
    demo_all: bool,
    name: String,
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataset").field("name", &self.name).field("len", &self.items.len()).finish()
    }
}

/// The embedded digits' committed splits.
pub struct DemoSplits {
    pub calibration: Dataset,
    pub held_out: Dataset,
    pub report: Dataset,
}

fn is_hidden(p: &Path) -> bool {
    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
}

fn is_image(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// Sorted non-hidden entries of `dir`, split into (directories, image files).
fn list_dir(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>), DataError> {
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let path = entry.path();
        if is_hidden(&path) {
            continue;
        }
        // Follow symlinks: a dataset tree may link its class folders.
        let meta = std::fs::metadata(&path).map_err(|e| DataError::io(&path, e))?;
        if meta.is_dir() {
            dirs.push(path);
        } else if is_image(&path) {
            files.push(path);
        }
    }
    dirs.sort();
    files.sort();
    Ok((dirs, files))
}

fn images_recursive(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
    let (dirs, files) = list_dir(dir)?;
    // Files of a folder first, then its sub-folders, all sorted: the same
    // order as sorting full paths would give for most trees, but stable.
    out.extend(files);
    for d in dirs {
        images_recursive(&d, out)?;
    }
    Ok(())
}

impl Dataset {
    fn new(source: Source, name: String) -> Self {
        let n = match &source {
            Source::Folder { files, .. } => files.len(),
            Source::Tensors { inputs, .. } => inputs.shape().first().copied().unwrap_or(0),
            Source::Demo { labels, .. } => labels.len(),
        };
        Dataset { source: Arc::new(source), items: (0..n).collect(), demo_all: false, name }
    }

    /// Opens a data spec (see the module docs).
    pub fn open(spec: &str) -> Result<Self, DataError> {
        if let Some(rest) = spec.strip_prefix("demo") {
            let split = match rest {
                "" => return Self::demo(None),
                ":train" => Split::Train,
                ":val" => Split::Val,
                ":test" => Split::Test,
                _ => {
                    return Err(DataError::Spec {
                        spec: spec.into(),
                        problem: "the demo splits are demo, demo:train, demo:val and demo:test".into(),
                    })
                }
            };
            if !Path::new(spec).exists() {
                return Self::demo(Some(split));
            }
        }
        let path = Path::new(spec);
        let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
        if meta.is_dir() {
            let (dirs, _) = list_dir(path)?;
            return if dirs.is_empty() { Self::image_files(path) } else { Self::image_folder(path) };
        }
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("npy" | "npz") => Self::tensors(path),
            _ => Err(DataError::Spec {
                spec: spec.into(),
                problem: "expected a folder of images, a .npy or .npz file, or demo[:train|:val|:test]".into(),
            }),
        }
    }

    /// An ImageFolder tree: one sub-folder per class.
    pub fn image_folder(root: impl AsRef<Path>) -> Result<Self, DataError> {
        let root = root.as_ref();
        let (dirs, loose) = list_dir(root)?;
        if let Some(first) = loose.first() {
            return Err(DataError::MixedFolder {
                path: root.display().to_string(),
                example: first.display().to_string(),
            });
        }
        if dirs.is_empty() {
            return Err(DataError::Empty { path: root.display().to_string(), what: "class sub-folders".into() });
        }
        let mut files = Vec::new();
        let mut labels = Vec::new();
        let mut classes = Vec::with_capacity(dirs.len());
        for (class, dir) in dirs.iter().enumerate() {
            let before = files.len();
            images_recursive(dir, &mut files)?;
            if files.len() == before {
                return Err(DataError::EmptyClass { path: dir.display().to_string() });
            }
            labels.resize(files.len(), class);
            classes.push(dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        }
        let source = Source::Folder { root: root.to_path_buf(), files, labels: Some(labels), classes: Some(classes) };
        Ok(Self::new(source, root.display().to_string()))
    }

    /// A flat folder of unlabeled images.
    pub fn image_files(root: impl AsRef<Path>) -> Result<Self, DataError> {
        let root = root.as_ref();
        let (_, files) = list_dir(root)?;
        if files.is_empty() {
            return Err(DataError::Empty { path: root.display().to_string(), what: "images (.png/.jpg/.jpeg)".into() });
        }
        let source = Source::Folder { root: root.to_path_buf(), files, labels: None, classes: None };
        Ok(Self::new(source, root.display().to_string()))
    }

    /// Preprocessed tensors from a `.npy` or `.npz` file.
    pub fn tensors(path: impl AsRef<Path>) -> Result<Self, DataError> {
        let path = path.as_ref();
        let t = tensors::load(path)?;
        let source = Source::Tensors { path: path.to_path_buf(), inputs: t.inputs, labels: t.labels };
        Ok(Self::new(source, path.display().to_string()))
    }

    /// The embedded digits: all of them, or one committed split.
    pub fn demo(split: Option<Split>) -> Result<Self, DataError> {
        let spec = match split {
            None => "demo",
            Some(Split::Train) => "demo:train",
            Some(Split::Val) => "demo:val",
            Some(Split::Test) => "demo:test",
        };
        let digits = Digits::embedded().map_err(|problem| DataError::Spec { spec: spec.into(), problem })?;
        let mut all: Vec<usize> =
            [Split::Train, Split::Val, Split::Test].iter().flat_map(|&s| digits.indices(s).to_vec()).collect();
        all.sort_unstable();
        all.dedup();
        let n = all.last().map_or(0, |l| l + 1);
        let labels = (0..n).map(|i| digits.label(i)).collect();
        let items = match split {
            None => all,
            Some(s) => digits.indices(s).to_vec(),
        };
        let mut ds = Self::new(Source::Demo { digits, labels }, spec.into());
        ds.items = items;
        ds.demo_all = split.is_none();
        Ok(ds)
    }

    /// The embedded digits' calibration (train), held-out (val) and report
    /// (test) sets.
    pub fn demo_splits() -> Result<DemoSplits, DataError> {
        let all = Self::demo(None)?;
        Ok(DemoSplits {
            calibration: all.demo_view(Split::Train, "demo:train"),
            held_out: all.demo_view(Split::Val, "demo:val"),
            report: all.demo_view(Split::Test, "demo:test"),
        })
    }

    fn demo_view(&self, split: Split, name: &str) -> Dataset {
        let items = match &*self.source {
            Source::Demo { digits, .. } => digits.indices(split).to_vec(),
            _ => Vec::new(),
        };
        Dataset { source: Arc::clone(&self.source), items, demo_all: false, name: name.into() }
    }

    /// A name for messages (the path or spec).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Class names (ImageFolder: sorted folder names; demo: "0".."9").
    pub fn classes(&self) -> Option<Vec<String>> {
        match &*self.source {
            Source::Folder { classes, .. } => classes.clone(),
            Source::Demo { .. } => Some((0..10).map(|d| d.to_string()).collect()),
            Source::Tensors { .. } => None,
        }
    }

    fn source_labels(&self) -> Option<&[usize]> {
        match &*self.source {
            Source::Folder { labels, .. } | Source::Tensors { labels, .. } => labels.as_deref(),
            Source::Demo { labels, .. } => Some(labels),
        }
    }

    pub fn has_labels(&self) -> bool {
        self.source_labels().is_some()
    }

    /// The labels of the items in order, if the data has labels.
    pub fn labels(&self) -> Option<Vec<usize>> {
        let all = self.source_labels()?;
        Some(self.items.iter().map(|&i| all[i]).collect())
    }

    /// The labels, or an error naming the data for uses that need them.
    pub fn require_labels(&self) -> Result<Vec<usize>, DataError> {
        self.labels().ok_or_else(|| DataError::MissingLabels { source_name: self.name.clone() })
    }

    /// The image files in use, in order (empty for tensors and the demo).
    pub fn paths(&self) -> Vec<&Path> {
        match &*self.source {
            Source::Folder { files, .. } => self.items.iter().map(|&i| files[i].as_path()).collect(),
            _ => Vec::new(),
        }
    }

    /// Names item `pos` in messages: its file, or the file and index.
    pub fn describe(&self, pos: usize) -> String {
        let Some(&i) = self.items.get(pos) else { return format!("{}[{pos}]", self.name) };
        match &*self.source {
            Source::Folder { files, .. } => files[i].display().to_string(),
            Source::Tensors { path, .. } => format!("{}[{i}]", path.display()),
            Source::Demo { .. } => format!("<embedded digits #{i}>"),
        }
    }

    /// The items in use as indices into the data source (sorted file list,
    /// tensor index, digit index), in order.
    pub fn source_indices(&self) -> &[usize] {
        &self.items
    }

    /// Items in the whole data source (not only this view).
    pub fn source_len(&self) -> usize {
        match &*self.source {
            Source::Folder { files, .. } => files.len(),
            Source::Tensors { inputs, .. } => inputs.shape().first().copied().unwrap_or(0),
            Source::Demo { labels, .. } => labels.len(),
        }
    }

    /// How item `i` of the source is named, independently of where the data
    /// is mounted: its path relative to the folder, or its index.
    fn item_id(&self, i: usize) -> String {
        match &*self.source {
            Source::Folder { root, files, .. } => {
                let rel = files[i].strip_prefix(root).unwrap_or(&files[i]);
                rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
            }
            Source::Tensors { .. } | Source::Demo { .. } => i.to_string(),
        }
    }

    /// What kind of source this is, for fingerprints: `folder`, `tensors
    /// FILE_NAME [shape]` or `demo digits`.
    fn source_kind(&self) -> String {
        match &*self.source {
            Source::Folder { .. } => "folder".into(),
            Source::Tensors { path, inputs, .. } => format!(
                "tensors {} {:?}",
                path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                inputs.shape()
            ),
            Source::Demo { .. } => "demo digits".into(),
        }
    }

    fn hash_items(&self, items: impl Iterator<Item = usize>) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(self.source_kind().as_bytes());
        h.update(b"\n");
        for i in items {
            h.update(self.item_id(i).as_bytes());
            h.update(b"\n");
        }
        rba_protocol::hex(&h.finalize())
    }

    /// SHA-256 (hex) of the items in use, in order, by name (relative
    /// paths, or indices for tensors and the digits): the same images give
    /// the same fingerprint wherever the data is mounted. Contents are not
    /// read.
    pub fn fingerprint(&self) -> String {
        self.hash_items(self.items.iter().copied())
    }

    /// [`Dataset::fingerprint`] of the whole data source (every item, not
    /// only this view's): `demo`, `demo:train` and `demo:val` share one.
    pub fn source_fingerprint(&self) -> String {
        self.hash_items(0..self.source_len())
    }

    /// This view without the items whose source index is in `drop`.
    pub fn without(&self, drop: &std::collections::HashSet<usize>) -> Dataset {
        let items = self.items.iter().copied().filter(|i| !drop.contains(i)).collect();
        self.with_items(items, self.name.clone())
    }

    fn with_items(&self, items: Vec<usize>, name: String) -> Dataset {
        Dataset { source: Arc::clone(&self.source), items, demo_all: false, name }
    }

    /// At most `samples` items: the first ones, or with `seed` a seeded
    /// random choice (kept in dataset order). `None` keeps everything.
    pub fn subset(&self, samples: Option<usize>, seed: Option<u64>) -> Dataset {
        let Some(k) = samples.filter(|&k| k < self.items.len()) else { return self.clone() };
        let items = match seed {
            None => self.items[..k].to_vec(),
            Some(seed) => {
                let mut pos: Vec<usize> = (0..self.items.len()).collect();
                shuffle(&mut pos, seed);
                let mut chosen = pos[..k].to_vec();
                chosen.sort_unstable();
                chosen.into_iter().map(|p| self.items[p]).collect()
            }
        };
        self.with_items(items, self.name.clone())
    }

    /// The same items in a seeded random order.
    pub fn shuffled(&self, seed: u64) -> Dataset {
        let mut items = self.items.clone();
        shuffle(&mut items, seed);
        self.with_items(items, self.name.clone())
    }

    /// The items at these positions (of this view), in the given order.
    pub fn select(&self, positions: &[usize]) -> Result<Dataset, DataError> {
        let items = positions
            .iter()
            .map(|&p| {
                self.items.get(p).copied().ok_or_else(|| DataError::Split {
                    n: self.items.len(),
                    problem: format!("position {p} is out of range"),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(self.with_items(items, self.name.clone()))
    }

    /// (calibration, held-out): disjoint and deterministic, see [`split_indices`].
    pub fn split(&self, holdout: Holdout, seed: u64) -> Result<(Dataset, Dataset), DataError> {
        let (calib, held) = split_indices(self.items.len(), holdout, seed)?;
        Ok((self.select(&calib)?, self.select(&held)?))
    }

    /// Like [`Dataset::split`], except that the whole embedded digits set
    /// (`demo`) uses its committed train (calibration) and val (held-out)
    /// splits, whatever `holdout` and `seed` say.
    pub fn calibration_split(&self, holdout: Holdout, seed: u64) -> Result<(Dataset, Dataset), DataError> {
        if self.demo_all {
            return Ok((self.demo_view(Split::Train, "demo:train"), self.demo_view(Split::Val, "demo:val")));
        }
        self.split(holdout, seed)
    }

    /// Batches of `batch` items in order (the last may be shorter), each
    /// decoded and preprocessed when the iterator reaches it.
    pub fn batches<'a>(&'a self, pre: &'a Preprocess, batch: usize) -> Batches<'a> {
        Batches { data: self, pre, batch: batch.max(1), next: 0, first: None }
    }

    /// All items as one array (for small data; prefer [`Dataset::batches`]).
    pub fn load_all(&self, pre: &Preprocess) -> Result<(nd::ArrayD<f32>, Option<Vec<usize>>), DataError> {
        let mut it = self.batches(pre, self.items.len().max(1));
        match it.next() {
            Some(b) => b,
            None => Err(DataError::Empty { path: self.name.clone(), what: "samples".into() }),
        }
    }

    /// One item: raw HWC pixels (images and the demo) or a preprocessed
    /// sample (tensors).
    fn load_item(&self, pos: usize) -> Result<Loaded, DataError> {
        let i = self.items[pos];
        match &*self.source {
            Source::Folder { files, .. } => decode(&files[i]).map(Loaded::Image),
            Source::Demo { digits, .. } => {
                // `Digits::batch` scales by exactly 1/16; undo it (exact).
                let b = digits.batch(&[i]);
                Ok(Loaded::Image(RawImage { h: 8, w: 8, c: 1, data: b.iter().map(|v| v * 16.0).collect() }))
            }
            Source::Tensors { inputs, .. } => Ok(Loaded::Tensor(inputs.index_axis(nd::Axis(0), i).to_owned())),
        }
    }
}

enum Loaded {
    Image(RawImage),
    Tensor(nd::ArrayD<f32>),
}

/// Decodes an image file into raw HWC values (gray: 1 channel, gray+alpha: 2,
/// colour: 3, alpha dropped).
pub fn decode(path: &Path) -> Result<RawImage, DataError> {
    let shown = || path.display().to_string();
    let reader = image::ImageReader::open(path).map_err(|e| DataError::io(path, e))?;
    let reader = reader.with_guessed_format().map_err(|e| DataError::io(path, e))?;
    let img = reader.decode().map_err(|e| DataError::Image { path: shown(), reason: e.to_string() })?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    if img.color().has_color() {
        let rgb = img.to_rgb8();
        Ok(RawImage { h, w, c: 3, data: rgb.as_raw().iter().map(|&v| v as f32).collect() })
    } else {
        let gray = img.to_luma8();
        Ok(RawImage { h, w, c: 1, data: gray.as_raw().iter().map(|&v| v as f32).collect() })
    }
}

/// Iterator of `(inputs [B, ...], labels)` batches; see [`Dataset::batches`].
pub struct Batches<'a> {
    data: &'a Dataset,
    pre: &'a Preprocess,
    batch: usize,
    next: usize,
    /// First image seen and its size, for mixed-size errors.
    first: Option<(String, Hw)>,
}

impl Batches<'_> {
    fn load(&mut self, start: usize, end: usize) -> Result<(nd::ArrayD<f32>, Option<Vec<usize>>), DataError> {
        let mut shape: Option<Vec<usize>> = None;
        let mut values: Vec<f32> = Vec::new();
        for pos in start..end {
            let origin = self.data.describe(pos);
            let (sample_shape, sample) = match self.data.load_item(pos)? {
                Loaded::Image(img) => {
                    let (size, v) = self.pre.apply(&img, &origin)?;
                    match &self.first {
                        None => self.first = Some((origin.clone(), size)),
                        Some((first_path, first)) if *first != size => {
                            return Err(DataError::MixedSizes {
                                path: origin,
                                got: size,
                                first_path: first_path.clone(),
                                first: *first,
                            })
                        }
                        _ => {}
                    }
                    let dims = match self.pre.layout {
                        Layout::Nchw => vec![self.pre.channels, size.h, size.w],
                        Layout::Nhwc => vec![size.h, size.w, self.pre.channels],
                    };
                    if let Some(want) = self.pre.model_input.as_ref().and_then(|m| m.get(1..)) {
                        if want != dims.as_slice() {
                            return Err(DataError::TensorShape { path: origin, got: dims, want: want.to_vec() });
                        }
                    }
                    (dims, v)
                }
                Loaded::Tensor(t) => {
                    let dims = t.shape().to_vec();
                    if let Some(want) = self.pre.tensor_shape() {
                        if want != dims {
                            return Err(DataError::TensorShape { path: origin, got: dims, want });
                        }
                    }
                    (dims, t.iter().copied().collect())
                }
            };
            match &shape {
                None => {
                    values.reserve(sample.len() * (end - start));
                    shape = Some(sample_shape);
                }
                Some(s) if *s != sample_shape => {
                    return Err(DataError::TensorShape { path: origin, got: sample_shape, want: s.clone() })
                }
                _ => {}
            }
            values.extend(sample);
        }
        let mut full = vec![end - start];
        full.extend(shape.unwrap_or_default());
        let inputs = nd::ArrayD::from_shape_vec(full, values)
            .map_err(|e| DataError::Tensors { path: self.data.name.clone(), problem: e.to_string() })?;
        let labels = self.data.source_labels().map(|all| self.data.items[start..end].iter().map(|&i| all[i]).collect());
        Ok((inputs, labels))
    }
}

impl Iterator for Batches<'_> {
    type Item = Result<(nd::ArrayD<f32>, Option<Vec<usize>>), DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        let n = self.data.items.len();
        if self.next >= n {
            return None;
        }
        let start = self.next;
        let end = (start + self.batch).min(n);
        let out = self.load(start, end);
        // Stop after an error: the caller sees it once.
        self.next = if out.is_err() { n } else { end };
        Some(out)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.data.items.len().saturating_sub(self.next).div_ceil(self.batch);
        (left, Some(left))
    }
}
