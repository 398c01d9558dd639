//! Image preprocessing: resize, center crop, channel conversion, scale,
//! normalize and layout, configured from flags, a HuggingFace
//! `preprocessor_config.json`, the model's `rba.preprocess` metadata and the
//! model's input shape (in that order of precedence).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::Value;

use super::DataError;
use crate::onnx::OnnxModel;

/// Metadata key holding the model's preprocessing as JSON.
pub const METADATA_KEY: &str = "rba.preprocess";

/// Memory layout of one model input: channels first or last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Nchw,
    Nhwc,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::Nchw => "nchw",
            Layout::Nhwc => "nhwc",
        })
    }
}

impl FromStr for Layout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "nchw" | "chw" => Ok(Layout::Nchw),
            "nhwc" | "hwc" => Ok(Layout::Nhwc),
            other => Err(format!("unknown layout '{other}' (expected nchw or nhwc)")),
        }
    }
}

/// A height and width, parsed from `H,W`, `HxW` or a single number (square).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hw {
    pub h: usize,
    pub w: usize,
}

impl Hw {
    pub fn new(h: usize, w: usize) -> Self {
        Self { h, w }
    }
}

impl fmt::Display for Hw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.h, self.w)
    }
}

impl FromStr for Hw {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split([',', 'x', 'X']).map(str::trim).collect();
        let num = |p: &str| match p.parse::<usize>() {
            Ok(v) if v > 0 => Ok(v),
            _ => Err(format!("'{s}' is not a size: expected H,W or a single positive number")),
        };
        match parts.as_slice() {
            [n] => num(n).map(|n| Hw::new(n, n)),
            [h, w] => Ok(Hw::new(num(h)?, num(w)?)),
            _ => Err(format!("'{s}' is not a size: expected H,W or a single positive number")),
        }
    }
}

/// How images are resized before cropping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resize {
    /// Keep the image size.
    None,
    /// Resize to exactly this size (aspect ratio not kept).
    Exact(Hw),
    /// Resize keeping the aspect ratio so that the shorter side is this long;
    /// the longer side is `floor(long * n / short)` (as torchvision and HF).
    Shorter(usize),
}

/// Parses `1/255`, `0.00392` or `255` style scale factors.
pub fn parse_scale(s: &str) -> Result<f32, String> {
    let bad = || format!("'{s}' is not a scale factor (examples: 1/255, 0.0625)");
    let v = match s.split_once('/') {
        Some((a, b)) => {
            let (a, b) = (a.trim().parse::<f64>().map_err(|_| bad())?, b.trim().parse::<f64>().map_err(|_| bad())?);
            if b == 0.0 {
                return Err(bad());
            }
            a / b
        }
        None => s.trim().parse::<f64>().map_err(|_| bad())?,
    };
    if !v.is_finite() || v == 0.0 {
        return Err(bad());
    }
    Ok(v as f32)
}

/// Preprocessing as the user gave it (command-line flags); `None` defers to
/// the next source (a config file, the model's metadata, its input shape).
#[derive(Debug, Clone, Default)]
pub struct PreprocessOptions {
    /// Resize every image to H,W before cropping.
    pub size: Option<Hw>,
    /// Resize keeping the aspect ratio so the shorter side is N pixels.
    pub resize_shorter: Option<usize>,
    /// Center-crop to H,W after resizing.
    pub crop: Option<Hw>,
    /// Per-channel mean subtracted after scaling (one value or one per channel).
    pub mean: Option<Vec<f32>>,
    /// Per-channel standard deviation divided by after subtracting the mean.
    pub std: Option<Vec<f32>>,
    /// Factor applied to raw pixel values first, e.g. 1/255.
    pub scale: Option<f32>,
    /// Model input layout.
    pub layout: Option<Layout>,
    /// Channels the model takes (1 = grayscale, 3 = RGB).
    pub channels: Option<usize>,
    /// A HuggingFace preprocessor_config.json to take preprocessing from.
    pub preprocessor_config: Option<PathBuf>,
}

/// One source's (partial) preprocessing; `None` fields defer to the next source.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PreprocessSpec {
    pub resize: Option<Resize>,
    /// `Some(None)`: explicitly no crop.
    pub crop: Option<Option<Hw>>,
    pub scale: Option<f32>,
    pub mean: Option<Vec<f32>>,
    pub std: Option<Vec<f32>>,
    pub layout: Option<Layout>,
    pub channels: Option<usize>,
    /// Output height and width the model needs (from its input shape).
    pub target: Option<Hw>,
}

impl PreprocessSpec {
    /// The explicit flags (not the config file they may name).
    pub fn from_args(args: &PreprocessOptions) -> Self {
        let resize = match (args.size, args.resize_shorter) {
            (Some(s), _) => Some(Resize::Exact(s)),
            (None, Some(n)) => Some(Resize::Shorter(n)),
            _ => None,
        };
        Self {
            resize,
            crop: args.crop.map(Some),
            scale: args.scale,
            mean: args.mean.clone(),
            std: args.std.clone(),
            layout: args.layout,
            channels: args.channels,
            target: None,
        }
    }

    /// Reads a HuggingFace `preprocessor_config.json`.
    pub fn from_hf_file(path: &Path) -> Result<Self, DataError> {
        let text = std::fs::read_to_string(path).map_err(|source| DataError::io(path, source))?;
        Self::from_hf_json(&text, &path.display().to_string())
    }

    /// Parses HuggingFace image-processor JSON; `origin` names it in errors.
    /// Understood keys: do_resize, size ({height,width}, {shortest_edge} or a
    /// number), do_center_crop, crop_size, do_rescale, rescale_factor,
    /// do_normalize, image_mean, image_std. Others are ignored.
    pub fn from_hf_json(text: &str, origin: &str) -> Result<Self, DataError> {
        let err = |problem: String| DataError::Config { origin: origin.to_string(), problem };
        let v: Value = serde_json::from_str(text).map_err(|e| err(format!("not valid JSON: {e}")))?;
        let obj = v.as_object().ok_or_else(|| err("expected a JSON object".into()))?;
        let flag = |key: &str| -> Result<Option<bool>, DataError> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Bool(b)) => Ok(Some(*b)),
                Some(other) => Err(err(format!("'{key}' should be true or false, found {other}"))),
            }
        };
        let do_center_crop = flag("do_center_crop")?;
        let mut spec = PreprocessSpec::default();
        match flag("do_resize")? {
            Some(false) => spec.resize = Some(Resize::None),
            _ => {
                if let Some(size) = obj.get("size").filter(|s| !s.is_null()) {
                    spec.resize =
                        Some(hf_size(size, do_center_crop == Some(true)).map_err(|p| err(format!("size: {p}")))?);
                }
            }
        }
        match do_center_crop {
            Some(false) => spec.crop = Some(None),
            Some(true) => {
                let crop = obj
                    .get("crop_size")
                    .ok_or_else(|| err("do_center_crop is true but crop_size is missing".into()))?;
                spec.crop = Some(Some(hf_hw(crop).map_err(|p| err(format!("crop_size: {p}")))?));
            }
            None => {
                if let Some(crop) = obj.get("crop_size").filter(|s| !s.is_null()) {
                    spec.crop = Some(Some(hf_hw(crop).map_err(|p| err(format!("crop_size: {p}")))?));
                }
            }
        }
        match flag("do_rescale")? {
            Some(false) => spec.scale = Some(1.0),
            _ => {
                if let Some(f) = obj.get("rescale_factor").filter(|s| !s.is_null()) {
                    let f = f.as_f64().ok_or_else(|| err(format!("rescale_factor should be a number, found {f}")))?;
                    spec.scale = Some(f as f32);
                }
            }
        }
        match flag("do_normalize")? {
            Some(false) => {
                spec.mean = Some(vec![0.0]);
                spec.std = Some(vec![1.0]);
            }
            _ => {
                spec.mean = obj.get("image_mean").map(|v| floats(v, "image_mean", &err)).transpose()?;
                spec.std = obj.get("image_std").map(|v| floats(v, "image_std", &err)).transpose()?;
            }
        }
        Ok(spec)
    }

    /// Parses the model's `rba.preprocess` metadata JSON: keys `layout`
    /// ("nchw"/"nhwc"), `scale`, `mean`, `std`, `size` ([h,w]: exact resize),
    /// `resize_shorter`, `crop` ([h,w]) and `channels`, all optional.
    pub fn from_metadata_json(text: &str, origin: &str) -> Result<Self, DataError> {
        let err = |problem: String| DataError::Config { origin: origin.to_string(), problem };
        let v: Value = serde_json::from_str(text).map_err(|e| err(format!("not valid JSON: {e}")))?;
        let obj = v.as_object().ok_or_else(|| err("expected a JSON object".into()))?;
        let get = |k: &str| obj.get(k).filter(|v| !v.is_null());
        let uint = |k: &str, v: &Value| -> Result<usize, DataError> {
            v.as_u64()
                .filter(|&n| n > 0)
                .map(|n| n as usize)
                .ok_or_else(|| err(format!("'{k}' should be a positive integer")))
        };
        let mut spec = PreprocessSpec::default();
        if let Some(l) = get("layout") {
            let text = l.as_str().ok_or_else(|| err("'layout' should be a string".into()))?;
            spec.layout = Some(text.parse().map_err(err)?);
        }
        if let Some(s) = get("scale") {
            spec.scale = Some(s.as_f64().ok_or_else(|| err("'scale' should be a number".into()))? as f32);
        }
        spec.mean = get("mean").map(|v| floats(v, "mean", &err)).transpose()?;
        spec.std = get("std").map(|v| floats(v, "std", &err)).transpose()?;
        if let Some(s) = get("size") {
            spec.resize = Some(Resize::Exact(hf_hw(s).map_err(|p| err(format!("size: {p}")))?));
        } else if let Some(n) = get("resize_shorter") {
            spec.resize = Some(Resize::Shorter(uint("resize_shorter", n)?));
        }
        if let Some(c) = get("crop") {
            spec.crop = Some(Some(hf_hw(c).map_err(|p| err(format!("crop: {p}")))?));
        }
        if let Some(c) = get("channels") {
            spec.channels = Some(uint("channels", c)?);
        }
        Ok(spec)
    }

    /// What a 4-D model input shape says: `[N,C,H,W]` with C 1 or 3 (and W
    /// not) is NCHW, `[N,H,W,C]` with C 1 or 3 (and H not) is NHWC. When both
    /// or neither reading fits (e.g. `[N,3,8,3]`) nothing is inferred and the
    /// layout must come from elsewhere; other ranks say nothing either.
    pub fn from_input_shape(shape: &[usize]) -> Self {
        let &[_, a, _, c] = shape else { return PreprocessSpec::default() };
        let chans = |d: usize| d == 1 || d == 3;
        match (chans(a), chans(c)) {
            (true, false) => Self::from_input_shape_as(shape, Layout::Nchw),
            (false, true) => Self::from_input_shape_as(shape, Layout::Nhwc),
            _ => PreprocessSpec::default(),
        }
    }

    /// Channels and size of a 4-D model input read with a known layout
    /// (nothing if that reading has not 1 or 3 channels).
    pub fn from_input_shape_as(shape: &[usize], layout: Layout) -> Self {
        let &[_, a, b, c] = shape else { return PreprocessSpec::default() };
        let (channels, target) = match layout {
            Layout::Nchw => (a, Hw::new(b, c)),
            Layout::Nhwc => (c, Hw::new(a, b)),
        };
        if channels != 1 && channels != 3 {
            return PreprocessSpec::default();
        }
        PreprocessSpec { layout: Some(layout), channels: Some(channels), target: Some(target), ..Default::default() }
    }

    /// Fields of `self`, with gaps filled from `lower`.
    pub fn or(self, lower: PreprocessSpec) -> PreprocessSpec {
        PreprocessSpec {
            resize: self.resize.or(lower.resize),
            crop: self.crop.or(lower.crop),
            scale: self.scale.or(lower.scale),
            mean: self.mean.or(lower.mean),
            std: self.std.or(lower.std),
            layout: self.layout.or(lower.layout),
            channels: self.channels.or(lower.channels),
            target: self.target.or(lower.target),
        }
    }
}

fn floats(v: &Value, key: &str, err: &dyn Fn(String) -> DataError) -> Result<Vec<f32>, DataError> {
    let bad = || err(format!("'{key}' should be a number or a list of numbers"));
    match v {
        Value::Number(n) => Ok(vec![n.as_f64().ok_or_else(bad)? as f32]),
        Value::Array(items) => items.iter().map(|x| x.as_f64().map(|f| f as f32).ok_or_else(bad)).collect(),
        _ => Err(bad()),
    }
}

fn hf_hw(v: &Value) -> Result<Hw, String> {
    let pos = |x: &Value| x.as_u64().filter(|&n| n > 0).map(|n| n as usize);
    match v {
        Value::Number(_) => pos(v).map(|n| Hw::new(n, n)).ok_or_else(|| format!("bad size {v}")),
        Value::Array(a) if a.len() == 2 => match (pos(&a[0]), pos(&a[1])) {
            (Some(h), Some(w)) => Ok(Hw::new(h, w)),
            _ => Err(format!("bad size {v}")),
        },
        Value::Object(o) => match (o.get("height").and_then(pos), o.get("width").and_then(pos)) {
            (Some(h), Some(w)) => Ok(Hw::new(h, w)),
            _ => Err(format!("expected {{\"height\": H, \"width\": W}}, found {v}")),
        },
        _ => Err(format!("bad size {v}")),
    }
}

/// HF `size`: `{height,width}` is exact, `{shortest_edge}` keeps the aspect
/// ratio; a bare number means the shortest edge when a center crop follows
/// (CLIP style) and a square otherwise (ViT style).
fn hf_size(v: &Value, crop_follows: bool) -> Result<Resize, String> {
    if let Some(n) = v.get("shortest_edge") {
        return n.as_u64().filter(|&n| n > 0).map(|n| Resize::Shorter(n as usize)).ok_or_else(|| format!("bad {v}"));
    }
    if let (Value::Number(n), true) = (v, crop_follows) {
        return n.as_u64().filter(|&n| n > 0).map(|n| Resize::Shorter(n as usize)).ok_or_else(|| format!("bad {v}"));
    }
    hf_hw(v).map(Resize::Exact)
}

/// Fully resolved preprocessing. Steps, in order: resize (bilinear,
/// half-pixel centres, no antialiasing), center crop (top/left offsets
/// rounded down), channel conversion (gray replicated to RGB; RGB to gray by
/// ITU-R 601 luma 0.299 R + 0.587 G + 0.114 B; alpha dropped), then per value
/// `(raw * scale - mean[c]) / std[c]`, then layout.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Preprocess {
    pub resize: Resize,
    pub crop: Option<Hw>,
    pub scale: f32,
    /// One value per channel (a single given value is repeated).
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub layout: Layout,
    pub channels: usize,
    /// Output height and width; `None` keeps the images' own (equal) size.
    pub size: Option<Hw>,
    /// The model input shape (`[N, ...]`) this was checked against; tensor
    /// datasets are checked against it instead of the image shape.
    pub model_input: Option<Vec<usize>>,
}

impl Preprocess {
    /// Merges, by field: `flags` > `hf` > `metadata` > what `model_input`
    /// (`[N, ...]`) implies, then checks the result against `model_input`.
    /// Defaults: no resize, no crop, scale 1/255, mean 0, std 1, NCHW, 3 channels.
    pub fn merge(
        flags: PreprocessSpec,
        hf: Option<PreprocessSpec>,
        metadata: Option<PreprocessSpec>,
        model_input: Option<&[usize]>,
    ) -> Result<Self, DataError> {
        let given = flags.or(hf.unwrap_or_default()).or(metadata.unwrap_or_default());
        let inferred = match (model_input, given.layout) {
            (Some(shape), Some(layout)) => PreprocessSpec::from_input_shape_as(shape, layout),
            (Some(shape), None) => PreprocessSpec::from_input_shape(shape),
            (None, _) => PreprocessSpec::default(),
        };
        let spec = given.or(inferred);
        let config = |problem: String| DataError::Config { origin: "preprocessing".into(), problem };
        let channels = spec.channels.unwrap_or(3);
        if channels != 1 && channels != 3 {
            return Err(config(format!("images can become 1 or 3 channels, not {channels}")));
        }
        let per_channel = |v: Option<Vec<f32>>, default: f32, what: &str| -> Result<Vec<f32>, DataError> {
            let v = v.unwrap_or_else(|| vec![default]);
            match v.len() {
                1 => Ok(vec![v[0]; channels]),
                n if n == channels => Ok(v),
                n => Err(config(format!("{what} has {n} values but the model takes {channels} channels"))),
            }
        };
        let mean = per_channel(spec.mean, 0.0, "mean")?;
        let std = per_channel(spec.std, 1.0, "std")?;
        if let Some(bad) = std.iter().find(|s| **s == 0.0 || !s.is_finite()) {
            return Err(config(format!("std values must be finite and non-zero, found {bad}")));
        }
        let resize = spec.resize.unwrap_or(Resize::None);
        if let Resize::Shorter(0) | Resize::Exact(Hw { h: 0, .. } | Hw { w: 0, .. }) = resize {
            return Err(config("resize sizes must be positive".into()));
        }
        let crop = spec.crop.flatten();
        let size = match (crop, resize) {
            (Some(c), _) => Some(c),
            (None, Resize::Exact(s)) => Some(s),
            _ => spec.target,
        };
        let pre = Preprocess {
            resize,
            crop,
            scale: spec.scale.unwrap_or(1.0 / 255.0),
            mean,
            std,
            layout: spec.layout.unwrap_or(Layout::Nchw),
            channels,
            size,
            model_input: model_input.map(<[usize]>::to_vec),
        };
        if let Some(shape) = model_input {
            pre.check_model_input(shape)?;
        }
        Ok(pre)
    }

    /// Flags, then the config file they name, then `model`'s metadata, then
    /// its input shape.
    pub fn for_model(args: &PreprocessOptions, model: &OnnxModel) -> Result<Self, DataError> {
        let shape = crate::model::run::input_shape(model, 1)
            .map_err(|e| DataError::Config { origin: model.path.display().to_string(), problem: e.to_string() })?;
        let metadata = model
            .metadata()
            .get(METADATA_KEY)
            .map(|text| {
                PreprocessSpec::from_metadata_json(
                    text,
                    &format!("{} (metadata '{METADATA_KEY}')", model.path.display()),
                )
            })
            .transpose()?;
        Self::from_args(args, metadata, Some(&shape))
    }

    /// Like [`Preprocess::for_model`] with the metadata and input shape given.
    pub fn from_args(
        args: &PreprocessOptions,
        metadata: Option<PreprocessSpec>,
        model_input: Option<&[usize]>,
    ) -> Result<Self, DataError> {
        let hf = args.preprocessor_config.as_deref().map(PreprocessSpec::from_hf_file).transpose()?;
        Self::merge(PreprocessSpec::from_args(args), hf, metadata, model_input)
    }

    /// For already preprocessed tensors fed to a model whose input is not an
    /// image: no image steps, tensors must match `model_input[1..]`.
    pub fn passthrough(model_input: &[usize]) -> Self {
        Preprocess {
            resize: Resize::None,
            crop: None,
            scale: 1.0,
            mean: vec![0.0],
            std: vec![1.0],
            layout: Layout::Nchw,
            channels: 1,
            size: None,
            model_input: Some(model_input.to_vec()),
        }
    }

    /// Shape one tensor sample must have: the model input without its batch
    /// axis if known, else the image shape.
    pub fn tensor_shape(&self) -> Option<Vec<usize>> {
        match &self.model_input {
            Some(m) => Some(m.get(1..).unwrap_or(&[]).to_vec()),
            None => self.sample_shape(),
        }
    }

    /// Shape of one preprocessed image (no batch axis), if the size is fixed.
    pub fn sample_shape(&self) -> Option<Vec<usize>> {
        self.size.map(|s| self.dims(s))
    }

    fn dims(&self, s: Hw) -> Vec<usize> {
        match self.layout {
            Layout::Nchw => vec![self.channels, s.h, s.w],
            Layout::Nhwc => vec![s.h, s.w, self.channels],
        }
    }

    /// Errors unless one preprocessed image has the shape of `model_input[1..]`.
    pub fn check_model_input(&self, model_input: &[usize]) -> Result<(), DataError> {
        let want = model_input.get(1..).unwrap_or(&[]);
        let got = match self.size {
            Some(s) => self.dims(s),
            None => {
                // No fixed size: only the channel axis can be checked.
                let mut d = self.dims(Hw::new(0, 0));
                if want.len() == 3 {
                    let (h, w) = match self.layout {
                        Layout::Nchw => (want[1], want[2]),
                        Layout::Nhwc => (want[0], want[1]),
                    };
                    d = self.dims(Hw::new(h, w));
                }
                d
            }
        };
        if got.as_slice() != want {
            let mut produced = vec![model_input.first().copied().unwrap_or(1)];
            produced.extend(&got);
            return Err(DataError::ShapeMismatch {
                produced,
                model: model_input.to_vec(),
                detail: format!("{} channel(s), {}", self.channels, self.layout),
            });
        }
        Ok(())
    }

    /// Applies the pipeline to an HWC image; `origin` names it in errors.
    /// Returns the values in `self.layout` order (without batch axis).
    pub fn apply(&self, image: &RawImage, origin: &str) -> Result<(Hw, Vec<f32>), DataError> {
        // The fields are public: check what indexing below relies on.
        let per_channel = |v: &[f32]| v.len() == 1 || v.len() == self.channels;
        if !matches!(self.channels, 1 | 3) || !per_channel(&self.mean) || !per_channel(&self.std) {
            return Err(DataError::Config {
                origin: "preprocessing".into(),
                problem: format!(
                    "{} channels with {} mean and {} std values (need 1 or 3 channels, 1 or one value per channel)",
                    self.channels,
                    self.mean.len(),
                    self.std.len()
                ),
            });
        }
        if !(1..=4).contains(&image.c) || image.data.len() != image.h * image.w * image.c {
            return Err(DataError::Image {
                path: origin.to_string(),
                reason: format!("{} values do not make a {}x{}x{} image", image.data.len(), image.h, image.w, image.c),
            });
        }
        let resized = match self.resize {
            Resize::None => None,
            Resize::Exact(s) => Some(resize_bilinear(image, s)),
            Resize::Shorter(n) => {
                let (h, w) = (image.h, image.w);
                let s =
                    if h <= w { Hw::new(n, (w * n / h.max(1)).max(1)) } else { Hw::new((h * n / w.max(1)).max(1), n) };
                Some(resize_bilinear(image, s))
            }
        };
        let img = resized.as_ref().unwrap_or(image);
        let cropped;
        let img = match self.crop {
            None => img,
            Some(c) => {
                if c.h > img.h || c.w > img.w {
                    return Err(DataError::TooSmall { path: origin.to_string(), size: Hw::new(img.h, img.w), crop: c });
                }
                cropped = center_crop(img, c);
                &cropped
            }
        };
        let out_size = Hw::new(img.h, img.w);
        if let Some(want) = self.size {
            if want != out_size {
                return Err(DataError::ImageSize { path: origin.to_string(), got: out_size, want });
            }
        }
        let (h, w, c_in, c_out) = (img.h, img.w, img.c, self.channels);
        let mut out = vec![0.0f32; h * w * c_out];
        for y in 0..h {
            for x in 0..w {
                let px = &img.data[(y * w + x) * c_in..(y * w + x + 1) * c_in];
                for c in 0..c_out {
                    let raw = match (c_in, c_out) {
                        (1 | 2, _) => px[0],
                        (_, 1) => 0.299 * px[0] + 0.587 * px[1] + 0.114 * px[2],
                        _ => px[c],
                    };
                    let (mean, std) = (self.mean[c.min(self.mean.len() - 1)], self.std[c.min(self.std.len() - 1)]);
                    let v = (raw * self.scale - mean) / std;
                    let at = match self.layout {
                        Layout::Nchw => (c * h + y) * w + x,
                        Layout::Nhwc => (y * w + x) * c_out + c,
                    };
                    out[at] = v;
                }
            }
        }
        Ok((out_size, out))
    }
}

/// A decoded image: `h * w * c` raw values (0..=255 for 8-bit files), HWC.
#[derive(Debug, Clone, PartialEq)]
pub struct RawImage {
    pub h: usize,
    pub w: usize,
    /// 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA).
    pub c: usize,
    pub data: Vec<f32>,
}

/// Bilinear resize with half-pixel centres (OpenCV / `align_corners=False`),
/// edges clamped; the same size is an exact copy.
pub fn resize_bilinear(img: &RawImage, to: Hw) -> RawImage {
    if (img.h, img.w) == (to.h, to.w) || img.h == 0 || img.w == 0 {
        return img.clone();
    }
    let taps = |out: usize, inp: usize| -> Vec<(usize, usize, f32)> {
        let ratio = inp as f64 / out as f64;
        (0..out)
            .map(|i| {
                let src = ((i as f64 + 0.5) * ratio - 0.5).max(0.0);
                let lo = (src.floor() as usize).min(inp - 1);
                let hi = (lo + 1).min(inp - 1);
                (lo, hi, (src - lo as f64) as f32)
            })
            .collect()
    };
    let (ys, xs) = (taps(to.h, img.h), taps(to.w, img.w));
    let c = img.c;
    let mut data = Vec::with_capacity(to.h * to.w * c);
    let at = |y: usize, x: usize, k: usize| img.data[(y * img.w + x) * c + k];
    for &(y0, y1, fy) in &ys {
        for &(x0, x1, fx) in &xs {
            for k in 0..c {
                let top = at(y0, x0, k) * (1.0 - fx) + at(y0, x1, k) * fx;
                let bottom = at(y1, x0, k) * (1.0 - fx) + at(y1, x1, k) * fx;
                data.push(top * (1.0 - fy) + bottom * fy);
            }
        }
    }
    RawImage { h: to.h, w: to.w, c, data }
}

/// Center crop; offsets are `(size - crop) / 2` rounded down. `to` must fit.
pub fn center_crop(img: &RawImage, to: Hw) -> RawImage {
    let top = img.h.saturating_sub(to.h) / 2;
    let left = img.w.saturating_sub(to.w) / 2;
    let c = img.c;
    let mut data = Vec::with_capacity(to.h * to.w * c);
    for y in top..(top + to.h).min(img.h) {
        let row = (y * img.w + left) * c;
        data.extend_from_slice(&img.data[row..row + to.w.min(img.w) * c]);
    }
    RawImage { h: to.h.min(img.h), w: to.w.min(img.w), c, data }
}
