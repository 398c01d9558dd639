//! Linear probes: turn a headless backbone into a classifier by fitting a
//! ridge regression on one-hot targets in closed form (METHOD.md, "The linear
//! probe head") and appending it to the graph as `pool -> MatMul -> Add`.
//!
//! The training pass streams f64 sufficient statistics (`X^T X`, `X^T Y`,
//! sums) of the pooled feature, so memory is `O(D^2)` whatever the number of
//! images; only a bounded sample of pooled training rows is kept to report
//! training accuracy per lambda. Lambda is chosen on a validation split from
//! a relative grid (`lambda = r * trace(G) / D`, `G` the centred Gram): best
//! validation accuracy, ties to the larger lambda. By default the chosen
//! lambda is then refitted on train + validation (the validation statistics
//! are accumulated during the validation pass, so this costs no extra pass).

use std::collections::HashSet;

use faer::{Mat, Par};
use serde::Serialize;

use crate::data::{DataError, Dataset, Preprocess, Resize};
use crate::fit::{self, Cross, FitError, FitKind, Moments, Solver};
use crate::model::run::{nd, tensor_shapes, RunError, Runner, Runtime};
use crate::onnx::build::{attr_int, attr_ints, f32_tensor, f32_value_info, i64_tensor, node, value_info_dims, Dim};
use crate::onnx::graph::{prune, GraphIndex};
use crate::onnx::OnnxModel;
use crate::progress::{Progress, Task, Unit};

/// Metadata key holding the probe's record (JSON).
pub const METADATA_KEY: &str = "rba.probe";
/// Name of the appended output.
pub const OUTPUT: &str = "logits";
/// Prefix of every node and initializer the probe adds.
const PREFIX: &str = "rba.probe";
/// Default relative lambdas: `1e-6 ..= 1e1`, one per decade.
pub const DEFAULT_LAMBDAS: [f64; 8] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0];

/// How a token feature `[B, T, D]` becomes one vector per image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Token 0 (the CLS token of a ViT).
    Cls,
    /// The mean over tokens.
    Mean,
}

impl Pooling {
    /// The values `--pool` takes.
    pub const NAMES: [&'static str; 2] = ["cls", "mean"];
}

impl std::str::FromStr for Pooling {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cls" => Ok(Pooling::Cls),
            "mean" => Ok(Pooling::Mean),
            _ => Err(format!("unknown pooling '{s}' (expected one of: {})", Pooling::NAMES.join(", "))),
        }
    }
}

/// The per-image shape of the feature tensor, and so how it is pooled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum FeatureShape {
    /// `[B, T, D]`: pooled by [`Pooling`].
    Tokens { tokens: usize, dim: usize },
    /// `[B, C, H, W]`: spatial mean (channels first, as ONNX convolutions are).
    Channels { channels: usize, height: usize, width: usize },
    /// `[B, D]`: used as is.
    Flat { dim: usize },
}

impl FeatureShape {
    /// Width of the pooled vector.
    pub fn dim(&self) -> usize {
        match *self {
            FeatureShape::Tokens { dim, .. } | FeatureShape::Flat { dim } => dim,
            FeatureShape::Channels { channels, .. } => channels,
        }
    }

    /// Values per image in the unpooled tensor.
    fn per_image(&self) -> usize {
        match *self {
            FeatureShape::Tokens { tokens, dim } => tokens * dim,
            FeatureShape::Channels { channels, height, width } => channels * height * width,
            FeatureShape::Flat { dim } => dim,
        }
    }

    /// The pooling actually applied, as recorded in metadata.
    pub fn pooling_name(&self, pooling: Pooling) -> &'static str {
        match (self, pooling) {
            (FeatureShape::Tokens { .. }, Pooling::Cls) => "cls",
            (FeatureShape::Tokens { .. }, Pooling::Mean) => "mean",
            (FeatureShape::Channels { .. }, _) => "spatial_mean",
            (FeatureShape::Flat { .. }, _) => "none",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "{path}: tensor '{tensor}' does not exist in the model; candidates near the end of the graph: {candidates}"
    )]
    UnknownTensor { path: String, tensor: String, candidates: String },
    #[error("{path}: tensor '{tensor}' has shape {shape:?}; a probe needs [B, T, D] (tokens), [B, C, H, W] (channels first) or [B, D]")]
    UnsupportedShape { path: String, tensor: String, shape: Vec<usize> },
    #[error("{path}: the probe's output name '{OUTPUT}' is already used by a tensor the feature depends on")]
    NameTaken { path: String },
    #[error("{data}: {problem}")]
    Labels { data: String, problem: String },
    #[error("{problem}")]
    Options { problem: String },
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("ridge fit on '{tensor}' failed: {source}")]
    Fit { tensor: String, source: FitError },
}

/// What to probe and how.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// The feature tensor to cut the model at.
    pub feature: String,
    pub pooling: Pooling,
    /// Relative lambdas to try (multiples of `trace(G) / D`).
    pub relative_lambdas: Vec<f64>,
    /// Images per forward pass (a model with a fixed batch uses its own).
    pub batch: usize,
    /// Refit the chosen lambda on train + validation.
    pub refit: bool,
    /// Pooled training rows kept to report training accuracy (bounded memory).
    pub train_eval_rows: usize,
    /// What runs the backbone, on how many threads (ONNX Runtime's; tract's
    /// come from the caller's executor scope).
    pub runtime: Runtime,
    pub threads: usize,
}

impl ProbeOptions {
    pub fn new(feature: impl Into<String>) -> Self {
        Self {
            feature: feature.into(),
            pooling: Pooling::Cls,
            relative_lambdas: DEFAULT_LAMBDAS.to_vec(),
            batch: 16,
            refit: true,
            train_eval_rows: 5000,
            runtime: Runtime::Tract,
            threads: 1,
        }
    }
}

/// One lambda of the grid.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct LambdaTrial {
    pub relative_lambda: f64,
    /// Absolute lambda added to the centred Gram's diagonal.
    pub lambda: f64,
    /// On (at most `train_eval_rows` of) the training images, fit on train only.
    pub train_accuracy: f64,
    pub val_accuracy: Option<f64>,
    pub solver: Solver,
}

/// A probed model and how it was obtained.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The backbone up to the feature, with the head appended; its only output is [`OUTPUT`].
    pub model: OnnxModel,
    pub layout: FeatureShape,
    pub trials: Vec<LambdaTrial>,
    /// Index into `trials`.
    pub chosen: usize,
    /// `D x K`, row-major (row = feature).
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub classes: Vec<String>,
    /// What is stored (as JSON) under [`METADATA_KEY`].
    pub record: ProbeRecord,
}

/// The probe's record in the model's metadata (`rba.probe`, REPORT.md).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ProbeRecord {
    pub feature: String,
    pub feature_layout: FeatureShape,
    /// `cls`, `mean`, `spatial_mean` or `none`.
    pub pooling: String,
    pub relative_lambda: f64,
    pub lambda: f64,
    pub train_accuracy: f64,
    pub val_accuracy: Option<f64>,
    pub train_accuracy_images: usize,
    pub trials: Vec<LambdaTrial>,
    pub classes: Vec<String>,
    pub data: ProbeData,
    /// `train+val` or `train`.
    pub fitted_on: String,
    pub solver: Solver,
    pub method: String,
    pub output: Option<String>,
    /// Which images of the data source the head saw (absent from records
    /// written before rba recorded them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<ProbeImages>,
}

/// The images a probe was fitted and validated on.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ProbeData {
    pub train: String,
    pub train_images: usize,
    pub val: String,
    pub val_images: usize,
}

/// The images a probe saw, as indices into its data source, so that
/// `rba compact` can keep them out of its held-out set.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ProbeImages {
    /// [`Dataset::source_fingerprint`] of the data source.
    pub source: String,
    /// Items in the data source.
    pub source_items: usize,
    /// Source indices of the training and the validation images (both
    /// influence the head: validation picks lambda, and by default the
    /// head is refitted on train + validation).
    pub train: Vec<usize>,
    pub val: Vec<usize>,
}

/// How a probed model's head relates to held-out data ([`seen_by_head`]).
#[derive(Debug, Clone, PartialEq)]
pub enum HeadSeen {
    /// No probe record, another data source, or none of the held-out images.
    Nothing,
    /// The head was fitted on these held-out images (source indices).
    Images { data: ProbeData, seen: std::collections::HashSet<usize> },
    /// The record (written before rba recorded images) names a data
    /// source of the same name: the held-out images may have been seen.
    Unknown { data: ProbeData },
}

/// The data source a dataset name refers to: `demo:val` and `demo` are the
/// embedded digits; any other name is its own source.
fn source_name(name: &str) -> &str {
    if name == "demo" || name.starts_with("demo:") {
        "demo"
    } else {
        name
    }
}

/// Whether `model` carries a probe head (`rba.probe`) fitted on images of
/// `held_out`'s data source, and which of `held_out`'s images it saw.
pub fn seen_by_head(model: &OnnxModel, held_out: &Dataset) -> HeadSeen {
    let meta = model.metadata();
    let Some(record) = meta.get(METADATA_KEY).and_then(|j| serde_json::from_str::<ProbeRecord>(j).ok()) else {
        return HeadSeen::Nothing;
    };
    match &record.images {
        Some(images) if images.source == held_out.source_fingerprint() => {
            let all: HashSet<usize> = images.train.iter().chain(&images.val).copied().collect();
            let seen: std::collections::HashSet<usize> =
                held_out.source_indices().iter().copied().filter(|i| all.contains(i)).collect();
            if seen.is_empty() {
                HeadSeen::Nothing
            } else {
                HeadSeen::Images { data: record.data, seen }
            }
        }
        Some(_) => HeadSeen::Nothing,
        None => {
            let here = source_name(held_out.name());
            if source_name(&record.data.train) == here || source_name(&record.data.val) == here {
                HeadSeen::Unknown { data: record.data }
            } else {
                HeadSeen::Nothing
            }
        }
    }
}

/// The model cut at `tensor`: it becomes the only output and everything
/// that no longer feeds it is pruned.
pub fn cut(model: &OnnxModel, tensor: &str) -> Result<OnnxModel, ProbeError> {
    let path = model.path.display().to_string();
    let index = GraphIndex::new(model.graph()).map_err(|reason| RunError::Load { path: path.clone(), reason })?;
    if !index.producer.contains_key(tensor) && !index.inputs.iter().any(|i| i == tensor) {
        return Err(ProbeError::UnknownTensor {
            path,
            tensor: tensor.to_string(),
            candidates: candidates(&index, model, tensor).join(", "),
        });
    }
    let mut cut = model.clone();
    let graph = cut.graph_mut();
    // The runtime infers every shape; an output without dims is enough here.
    graph.output = vec![f32_value_info(tensor, &[])];
    prune(graph);
    Ok(cut)
}

/// A few tensors to suggest when `wanted` does not exist: those whose name
/// shares its last path component, else the last activations before the
/// outputs (where a probe usually goes).
fn candidates(index: &GraphIndex, model: &OnnxModel, wanted: &str) -> Vec<String> {
    let graph = model.graph();
    let ordered: Vec<&String> = index
        .order
        .iter()
        .flat_map(|&i| graph.node[i].output.iter())
        .filter(|t| index.activations.contains(*t))
        .collect();
    let key = wanted.rsplit(['/', '.']).next().unwrap_or(wanted).to_ascii_lowercase();
    let similar: Vec<String> = if key.len() >= 3 {
        ordered.iter().filter(|t| t.to_ascii_lowercase().contains(&key)).rev().take(6).map(|t| t.to_string()).collect()
    } else {
        Vec::new()
    };
    if !similar.is_empty() {
        return similar;
    }
    ordered.iter().rev().take(6).map(|t| t.to_string()).collect()
}

/// The feature's per-image layout, from shapes inferred at batch 2 (so the
/// batch axis can be told apart from a fixed leading dimension).
pub fn feature_shape(cut: &OnnxModel, tensor: &str) -> Result<FeatureShape, ProbeError> {
    let path = cut.path.display().to_string();
    let fixed_batch = crate::model::run::input_shape(cut, 2)?.first().copied().unwrap_or(2);
    let shapes = tensor_shapes(cut, fixed_batch)?;
    let shape = shapes.get(tensor).cloned().ok_or_else(|| ProbeError::UnknownTensor {
        path: path.clone(),
        tensor: tensor.to_string(),
        candidates: "(tract cannot infer its shape)".into(),
    })?;
    let unsupported =
        || ProbeError::UnsupportedShape { path: path.clone(), tensor: tensor.to_string(), shape: shape.clone() };
    if shape.first() != Some(&fixed_batch) || shape.contains(&0) {
        return Err(unsupported());
    }
    Ok(match shape[1..] {
        [tokens, dim] => FeatureShape::Tokens { tokens, dim },
        [channels, height, width] => FeatureShape::Channels { channels, height, width },
        [dim] => FeatureShape::Flat { dim },
        _ => return Err(unsupported()),
    })
}

/// Pools `valid` images of a feature batch into row-major `[valid, D]` rows,
/// exactly as the appended graph nodes do.
fn pool(feature: &nd::ArrayD<f32>, valid: usize, layout: FeatureShape, pooling: Pooling) -> Vec<f32> {
    let d = layout.dim();
    let per = layout.per_image();
    let values: Vec<f32> = feature.iter().copied().collect();
    let mut rows = Vec::with_capacity(valid * d);
    for img in values.chunks_exact(per).take(valid) {
        match (layout, pooling) {
            (FeatureShape::Tokens { .. }, Pooling::Cls) | (FeatureShape::Flat { .. }, _) => {
                rows.extend_from_slice(&img[..d])
            }
            (FeatureShape::Tokens { tokens, .. }, Pooling::Mean) => {
                let mut acc = vec![0f64; d];
                for tok in img.chunks_exact(d) {
                    acc.iter_mut().zip(tok).for_each(|(a, &v)| *a += v as f64);
                }
                rows.extend(acc.iter().map(|a| (a / tokens as f64) as f32));
            }
            (FeatureShape::Channels { height, width, .. }, _) => {
                let hw = height * width;
                rows.extend(
                    img.chunks_exact(hw).map(|c| (c.iter().map(|&v| v as f64).sum::<f64>() / hw as f64) as f32),
                );
            }
        }
    }
    rows
}

/// Runs `data` through the cut model and hands each batch's pooled rows and
/// labels to `sink`.
fn feature_pass(
    runner: &Runner,
    data: &Dataset,
    pre: &Preprocess,
    layout: FeatureShape,
    pooling: Pooling,
    task: &dyn Task,
    mut sink: impl FnMut(&[f32], &[usize]),
) -> Result<(), ProbeError> {
    let batch = runner.input_shape[0];
    for item in data.batches(pre, batch) {
        let (inputs, labels) = item?;
        let labels = labels.ok_or_else(|| DataError::MissingLabels { source_name: data.name().to_string() })?;
        let valid = inputs.shape()[0];
        // A fixed-shape plan: pad the last batch with zeros.
        let inputs = if valid == batch {
            inputs
        } else {
            let mut padded = nd::ArrayD::zeros(runner.input_shape.clone());
            padded.slice_axis_mut(nd::Axis(0), (0..valid).into()).assign(&inputs);
            padded
        };
        let feature = runner.run(inputs)?.swap_remove(0);
        sink(&pool(&feature, valid, layout, pooling), &labels);
        task.advance(valid as u64);
    }
    Ok(())
}

/// Streaming statistics of pooled features `X` and one-hot targets `Y`.
#[derive(Clone)]
struct Stats {
    x: Moments,
    y: Moments,
    xy: Cross,
}

impl Stats {
    fn new(d: usize, k: usize) -> Self {
        Self { x: Moments::new(d), y: Moments::new(k), xy: Cross::new(d, k) }
    }

    fn update(&mut self, rows: &[f32], labels: &[usize]) {
        let k = self.y.dim();
        let mut onehot = vec![0f32; labels.len() * k];
        for (r, &l) in labels.iter().enumerate() {
            onehot[r * k + l] = 1.0;
        }
        self.x.update(rows, Par::Seq);
        self.y.update_target(&onehot);
        self.xy.update(rows, &onehot, Par::Seq);
    }

    /// Ridge with an unpenalised bias: centre the statistics, solve with
    /// [`fit::fit`], recover `b = mean(Y) - mean(X) W`.
    fn ridge(&self, relative_lambda: f64) -> Result<Head, FitError> {
        let (d, k, n) = (self.x.dim(), self.y.dim(), self.x.rows);
        let (mx, my) = (self.x.mean(), self.y.mean());
        let mut xc = Moments::new(d);
        xc.rows = n;
        xc.gram = Mat::from_fn(d, d, |i, j| self.x.gram[(i, j)] - n * mx[i] * mx[j]);
        let mut yc = Moments::new(k);
        yc.rows = n;
        yc.sq_norm = self.y.sq_norm - n * my.iter().map(|v| v * v).sum::<f64>();
        let cc = Cross::from_mat(Mat::from_fn(d, k, |i, j| self.xy.xy[(i, j)] - n * mx[i] * my[j]));
        let f = fit::fit(FitKind::Ridge { relative_lambda }, &xc, &yc, &cc)?;
        let lambda = relative_lambda * (0..d).map(|i| xc.gram[(i, i)]).sum::<f64>() / d as f64;
        let bias = (0..k).map(|j| my[j] - (0..d).map(|i| mx[i] * f.weight[(i, j)]).sum::<f64>()).collect();
        Ok(Head { weight: f.weight, bias, lambda, solver: f.solver })
    }
}

/// A fitted head in f64.
struct Head {
    weight: Mat<f64>,
    bias: Vec<f64>,
    lambda: f64,
    solver: Solver,
}

impl Head {
    /// Predicted classes of row-major `[n, D]` rows.
    fn predict(&self, rows: &[f32]) -> Vec<usize> {
        let (d, k) = (self.weight.nrows(), self.weight.ncols());
        rows.chunks_exact(d)
            .map(|x| {
                let score = |j: usize| self.bias[j] + (0..d).map(|i| x[i] as f64 * self.weight[(i, j)]).sum::<f64>();
                (0..k)
                    .map(|j| (j, score(j)))
                    .fold((0, f64::NEG_INFINITY), |b, (j, s)| if s > b.1 { (j, s) } else { b })
                    .0
            })
            .collect()
    }

    fn correct(&self, rows: &[f32], labels: &[usize]) -> usize {
        self.predict(rows).iter().zip(labels).filter(|(p, l)| p == l).count()
    }
}

/// Class names and count: the dataset's names, else `0..=max label`.
fn classes(train: &Dataset, val: &Dataset) -> Result<Vec<String>, ProbeError> {
    let labels = train.require_labels()?;
    let val_labels = val.require_labels()?;
    let max = labels.iter().chain(&val_labels).max().copied();
    let names = match (train.classes(), max) {
        (Some(names), _) => names,
        (None, Some(m)) => (0..=m).map(|c| c.to_string()).collect(),
        (None, None) => {
            return Err(DataError::Empty { path: train.name().into(), what: "labelled samples".into() }.into())
        }
    };
    if let Some(m) = max.filter(|&m| m >= names.len()) {
        return Err(ProbeError::Labels {
            data: train.name().into(),
            problem: format!("label {m} is out of range for {} classes", names.len()),
        });
    }
    let distinct: HashSet<usize> = labels.iter().copied().collect();
    if distinct.len() < 2 {
        return Err(ProbeError::Labels {
            data: train.name().into(),
            problem: format!("the training images cover {} class(es); a classifier needs at least 2", distinct.len()),
        });
    }
    Ok(names)
}

/// Fits a probe on `train`, chooses lambda on `val`, and returns the model
/// with the head appended (and its record in metadata).
pub fn probe(
    model: &OnnxModel,
    train: &Dataset,
    val: &Dataset,
    pre: &Preprocess,
    options: &ProbeOptions,
    progress: &dyn Progress,
) -> Result<Probe, ProbeError> {
    let feature = options.feature.as_str();
    let classes = classes(train, val)?;
    let lambdas = &options.relative_lambdas;
    if lambdas.is_empty() || lambdas.iter().any(|l| !l.is_finite() || *l < 0.0) {
        return Err(ProbeError::Options { problem: format!("lambdas must be finite and >= 0, got {lambdas:?}") });
    }
    if val.is_empty() && lambdas.len() > 1 {
        return Err(ProbeError::Options {
            problem: "choosing lambda needs validation images; give a holdout or a single lambda".into(),
        });
    }
    let cut = cut(model, feature)?;
    let layout = feature_shape(&cut, feature)?;
    let (d, k) = (layout.dim(), classes.len());
    let runner = Runner::on(&options.runtime, &cut, options.batch, &[], options.threads)?;
    let passes = Passes { runner: &runner, pre, layout, pooling: options.pooling, progress };
    let fit_err = |source| ProbeError::Fit { tensor: feature.to_string(), source };

    let train_pass = passes.train(train, d, k, options.train_eval_rows)?;
    let heads: Vec<Head> =
        lambdas.iter().map(|&r| train_pass.stats.ridge(r)).collect::<Result<_, _>>().map_err(fit_err)?;
    let refit = options.refit && !val.is_empty();
    let (val_correct, all) = passes.validate(val, &heads, refit.then(|| train_pass.stats.clone()))?;
    let trials: Vec<LambdaTrial> = lambdas
        .iter()
        .zip(&heads)
        .zip(&val_correct)
        .map(|((&r, h), &c)| LambdaTrial {
            relative_lambda: r,
            lambda: h.lambda,
            train_accuracy: h.correct(&train_pass.kept_rows, &train_pass.kept_labels) as f64
                / train_pass.kept_labels.len().max(1) as f64,
            val_accuracy: (!val.is_empty()).then(|| c as f64 / val.len() as f64),
            solver: h.solver,
        })
        .collect();
    let chosen = choose_lambda(&trials);
    let head = all.as_ref().unwrap_or(&train_pass.stats).ridge(lambdas[chosen]).map_err(fit_err)?;
    let weight: Vec<f32> = (0..d * k).map(|p| head.weight[(p / k, p % k)] as f32).collect();
    let bias: Vec<f32> = head.bias.iter().map(|&v| v as f32).collect();

    let mut out = append_head(&cut, feature, layout, options.pooling, &weight, &bias, k)?;
    let t = &trials[chosen];
    let record = ProbeRecord {
        feature: feature.to_string(),
        feature_layout: layout,
        pooling: layout.pooling_name(options.pooling).to_string(),
        relative_lambda: t.relative_lambda,
        lambda: head.lambda,
        train_accuracy: t.train_accuracy,
        val_accuracy: t.val_accuracy,
        train_accuracy_images: train_pass.kept_labels.len(),
        trials: trials.clone(),
        classes: classes.clone(),
        data: ProbeData {
            train: train.name().to_string(),
            train_images: train.len(),
            val: val.name().to_string(),
            val_images: val.len(),
        },
        fitted_on: if refit { "train+val" } else { "train" }.to_string(),
        solver: head.solver,
        method: "ridge regression on one-hot targets, unpenalised bias, lambda relative to trace(centred Gram)/D"
            .to_string(),
        output: out.graph().output.first().map(|o| o.name().to_string()),
        images: Some(ProbeImages {
            source: train.source_fingerprint(),
            source_items: train.source_len(),
            train: train.source_indices().to_vec(),
            val: val.source_indices().to_vec(),
        }),
    };
    out.set_metadata(METADATA_KEY, serde_json::to_string(&record).unwrap_or_default());
    // The head only fits inputs preprocessed as here: record it so later
    // commands (and a device) use the same without repeating the flags.
    out.set_metadata(crate::data::preprocess::METADATA_KEY, preprocess_json(pre).to_string());
    Ok(Probe { model: out, layout, trials, chosen, weight, bias, classes, record })
}

/// Best validation accuracy; ties go to the larger (safer) lambda.
fn choose_lambda(trials: &[LambdaTrial]) -> usize {
    let mut chosen = 0;
    for (i, t) in trials.iter().enumerate() {
        let key = |t: &LambdaTrial| (t.val_accuracy.unwrap_or(0.0), t.relative_lambda);
        if key(t).partial_cmp(&key(&trials[chosen])).is_some_and(|o| o.is_ge()) {
            chosen = i;
        }
    }
    chosen
}

/// The two passes over the cut model's pooled feature.
struct Passes<'a> {
    runner: &'a Runner,
    pre: &'a Preprocess,
    layout: FeatureShape,
    pooling: Pooling,
    progress: &'a dyn Progress,
}

/// The training pass: statistics plus a bounded sample of rows for
/// training accuracy.
struct TrainPass {
    stats: Stats,
    kept_rows: Vec<f32>,
    kept_labels: Vec<usize>,
}

impl Passes<'_> {
    fn run(&self, data: &Dataset, what: &str, sink: impl FnMut(&[f32], &[usize])) -> Result<(), ProbeError> {
        let task = self.progress.task(what, Some(data.len() as u64), Unit::Images);
        feature_pass(self.runner, data, self.pre, self.layout, self.pooling, task.as_ref(), sink)
    }

    fn train(&self, train: &Dataset, d: usize, k: usize, keep: usize) -> Result<TrainPass, ProbeError> {
        let mut pass = TrainPass { stats: Stats::new(d, k), kept_rows: Vec::new(), kept_labels: Vec::new() };
        self.run(train, "probe: train features", |rows, labels| {
            pass.stats.update(rows, labels);
            let room = keep.saturating_sub(pass.kept_labels.len()).min(labels.len());
            pass.kept_rows.extend_from_slice(&rows[..room * d]);
            pass.kept_labels.extend_from_slice(&labels[..room]);
        })?;
        Ok(pass)
    }

    /// Correct validation predictions per head; with `all` (the training
    /// statistics), also adds the validation rows to it for the refit.
    fn validate(
        &self,
        val: &Dataset,
        heads: &[Head],
        mut all: Option<Stats>,
    ) -> Result<(Vec<usize>, Option<Stats>), ProbeError> {
        let mut correct = vec![0usize; heads.len()];
        self.run(val, "probe: validation features", |rows, labels| {
            for (c, h) in correct.iter_mut().zip(heads) {
                *c += h.correct(rows, labels);
            }
            if let Some(all) = all.as_mut() {
                all.update(rows, labels);
            }
        })?;
        Ok((correct, all))
    }
}

/// The resolved preprocessing in the `rba.preprocess` metadata format.
pub fn preprocess_json(pre: &Preprocess) -> serde_json::Value {
    let mut v = serde_json::json!({
        "layout": pre.layout.to_string(),
        "scale": pre.scale,
        "mean": &pre.mean,
        "std": &pre.std,
        "channels": pre.channels,
    });
    match pre.resize {
        Resize::Exact(hw) => v["size"] = serde_json::json!([hw.h, hw.w]),
        Resize::Shorter(n) => v["resize_shorter"] = serde_json::json!(n),
        Resize::None => {}
    }
    if let Some(c) = pre.crop {
        v["crop"] = serde_json::json!([c.h, c.w]);
    }
    v
}

/// Appends `pool -> MatMul W -> Add b` after `feature` in the cut model and
/// makes its result the only output.
pub fn append_head(
    cut: &OnnxModel,
    feature: &str,
    layout: FeatureShape,
    pooling: Pooling,
    weight: &[f32],
    bias: &[f32],
    classes: usize,
) -> Result<OnnxModel, ProbeError> {
    let path = cut.path.display().to_string();
    let mut out = cut.clone();
    let opset = out.opset().unwrap_or(0);
    let batch_dim = out
        .graph()
        .input
        .first()
        .and_then(value_info_dims)
        .and_then(|dims| dims.first().cloned().flatten())
        .unwrap_or(Dim::Named("batch".into()));
    let graph = out.graph_mut();
    let taken = graph.node.iter().flat_map(|n| n.output.iter()).any(|o| o == OUTPUT)
        || graph.input.iter().any(|i| i.name() == OUTPUT);
    if taken {
        return Err(ProbeError::NameTaken { path });
    }
    let name = |s: &str| format!("{PREFIX}/{s}");
    let pooled = name("pooled");
    let mut reduce_mean = |axes: &[i64]| {
        let mut n = node("ReduceMean", &name("ReduceMean"), &[feature], &[&pooled]);
        n.attribute.push(attr_int("keepdims", 0));
        // Opset 18 moved `axes` from an attribute to an input.
        if opset >= 18 {
            graph.initializer.push(i64_tensor(&name("axes"), &[axes.len()], axes));
            n.input.push(name("axes"));
        } else {
            n.attribute.push(attr_ints("axes", axes));
        }
        n
    };
    let pool_node = match (layout, pooling) {
        (FeatureShape::Tokens { .. }, Pooling::Cls) => {
            let mut n = node("Gather", &name("Gather"), &[feature, &name("cls_index")], &[&pooled]);
            n.attribute.push(attr_int("axis", 1));
            Some((n, Some(i64_tensor(&name("cls_index"), &[], &[0]))))
        }
        (FeatureShape::Tokens { .. }, Pooling::Mean) => Some((reduce_mean(&[1]), None)),
        (FeatureShape::Channels { .. }, _) => Some((reduce_mean(&[2, 3]), None)),
        (FeatureShape::Flat { .. }, _) => None,
    };
    let pooled = match pool_node {
        Some((n, init)) => {
            graph.node.push(n);
            graph.initializer.extend(init);
            pooled
        }
        None => feature.to_string(),
    };
    let d = layout.dim();
    graph.initializer.push(f32_tensor(&name("W"), &[d, classes], weight));
    graph.initializer.push(f32_tensor(&name("b"), &[classes], bias));
    graph.node.push(node("MatMul", &name("MatMul"), &[&pooled, &name("W")], &[&name("scores")]));
    graph.node.push(node("Add", &name("Add"), &[&name("scores"), &name("b")], &[OUTPUT]));
    graph.output = vec![f32_value_info(OUTPUT, &[batch_dim, Dim::Fixed(classes)])];
    prune(graph);
    Ok(out)
}
