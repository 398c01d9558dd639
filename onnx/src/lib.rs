//! rba-onnx: ONNX models as both sides of rba read them: protobuf types,
//! reading and writing files (including external data), graph queries,
//! small helpers to build nodes and tensors, the input rule ([`inputs`]) and
//! loading into tract ([`tract`]).
//!
//! We generate our own prost types from the official proto2 `onnx.proto`
//! instead of re-encoding `tract_onnx::pb`: tract's proto3 schema loses field
//! presence (an INT attribute equal to 0, an explicit `ir_version`) and the
//! newer fields (metadata_props on nodes and graphs), so a model would not
//! survive a read/write round trip unchanged.

pub mod budget;
pub mod build;
pub mod graph;
pub mod inputs;
pub mod tract;

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;

/// Types generated from the vendored official `onnx.proto` (proto2).
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

use proto::tensor_proto::DataLocation;
use proto::{ModelProto, StringStringEntryProto, TensorProto};

/// Highest default-domain opset we accept; newer ones may change operator
/// semantics under us.
pub const MAX_OPSET: i64 = 23;
/// Lowest default-domain opset we accept.
pub const MIN_OPSET: i64 = 7;
/// Opset domains whose operators we know about (the default one and the ones
/// exporters commonly attach without using).
const KNOWN_DOMAINS: [&str; 3] = ["", "ai.onnx", "ai.onnx.ml"];

/// Protobuf messages cannot exceed 2 GiB; past this, weights must go to an
/// external data file.
const PROTOBUF_LIMIT: usize = (1 << 31) - 1;

#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: cannot write: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a valid ONNX model (truncated or not ONNX): {reason}")]
    Decode { path: PathBuf, reason: String },
    #[error("{path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
    #[error("{path}: external data for tensor '{tensor}': {problem}")]
    ExternalData { path: PathBuf, tensor: String, problem: String },
}

/// An ONNX model in memory, with every tensor's data inline.
#[derive(Debug, Clone)]
pub struct OnnxModel {
    pub proto: ModelProto,
    /// Where the model was read from (for error messages); `<memory>` otherwise.
    pub path: PathBuf,
}

/// How tensor data is laid out when a model is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataPlacement {
    /// Everything inside the `.onnx` file (the default; fails past 2 GiB).
    Inline,
    /// Tensors of at least `min_bytes` go to one sidecar file next to the
    /// model, named `<model file name>.data`.
    External { min_bytes: usize },
}

impl OnnxModel {
    /// Reads an ONNX file, pulling tensors stored in external data files
    /// (relative to the model's directory) inline.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, OnnxError> {
        let path = path.as_ref();
        let bytes = fs::read(path).map_err(|source| OnnxError::Read { path: path.into(), source })?;
        let mut model = Self::from_bytes(&bytes, path)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        model.inline_external_data(dir)?;
        Ok(model)
    }

    /// Decodes and validates a model held in memory. `origin` names it in errors.
    pub fn from_bytes(bytes: &[u8], origin: impl Into<PathBuf>) -> Result<Self, OnnxError> {
        let path = origin.into();
        let proto =
            ModelProto::decode(bytes).map_err(|e| OnnxError::Decode { path: path.clone(), reason: e.to_string() })?;
        let model = Self { proto, path };
        model.validate()?;
        Ok(model)
    }

    fn invalid(&self, problem: impl Into<String>) -> OnnxError {
        OnnxError::Invalid { path: self.path.clone(), problem: problem.into() }
    }

    /// Structural checks that catch non-ONNX input that happens to decode as
    /// protobuf, and opsets we do not support.
    fn validate(&self) -> Result<(), OnnxError> {
        let graph = self
            .proto
            .graph
            .as_ref()
            .ok_or_else(|| self.invalid("not a valid ONNX model: it has no graph (truncated or not ONNX)"))?;
        if self.proto.ir_version.is_none() {
            return Err(self.invalid("not a valid ONNX model: ir_version is missing"));
        }
        if graph.node.is_empty() {
            return Err(self.invalid("the graph has no nodes"));
        }
        if graph.input.is_empty() || graph.output.is_empty() {
            return Err(self.invalid("the graph needs at least one input and one output"));
        }
        let opset = self.opset();
        match opset {
            None => return Err(self.invalid("no opset for the default ONNX domain")),
            Some(v) if !(MIN_OPSET..=MAX_OPSET).contains(&v) => {
                return Err(self.invalid(format!("unsupported opset {v} (supported: {MIN_OPSET}..={MAX_OPSET})")))
            }
            _ => {}
        }
        let unknown: Vec<&str> =
            self.proto.opset_import.iter().map(|o| o.domain()).filter(|d| !KNOWN_DOMAINS.contains(d)).collect();
        // A domain is only a problem if a node actually uses it.
        if let Some(node) = graph.node.iter().find(|n| unknown.contains(&n.domain())) {
            return Err(self.invalid(format!(
                "node '{}' uses operator {} from unsupported opset domain '{}'",
                node.name(),
                node.op_type(),
                node.domain()
            )));
        }
        Ok(())
    }

    /// The default-domain opset version.
    pub fn opset(&self) -> Option<i64> {
        self.proto.opset_import.iter().find(|o| o.domain() == "" || o.domain() == "ai.onnx").map(|o| o.version())
    }

    pub fn graph(&self) -> &proto::GraphProto {
        // `validate` guarantees the graph exists; an empty default keeps this total.
        static EMPTY: std::sync::OnceLock<proto::GraphProto> = std::sync::OnceLock::new();
        self.proto.graph.as_ref().unwrap_or_else(|| EMPTY.get_or_init(Default::default))
    }

    pub fn graph_mut(&mut self) -> &mut proto::GraphProto {
        self.proto.graph.get_or_insert_with(Default::default)
    }

    /// The model with all data inline, encoded as one protobuf message.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.proto.encode_to_vec()
    }

    /// Model-level metadata as a map (later entries win on duplicate keys).
    pub fn metadata(&self) -> HashMap<&str, &str> {
        self.proto.metadata_props.iter().map(|e| (e.key(), e.value())).collect()
    }

    /// Sets (or replaces) one model-level metadata entry.
    pub fn set_metadata(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        match self.proto.metadata_props.iter_mut().find(|e| e.key() == key) {
            Some(entry) => entry.value = Some(value),
            None => {
                self.proto.metadata_props.push(StringStringEntryProto { key: Some(key.into()), value: Some(value) })
            }
        }
    }

    fn inline_external_data(&mut self, dir: &Path) -> Result<(), OnnxError> {
        let path = self.path.clone();
        let mut files: HashMap<PathBuf, Vec<u8>> = HashMap::new();
        for tensor in all_tensors_mut(&mut self.proto) {
            if tensor.data_location != Some(DataLocation::External as i32) {
                continue;
            }
            let err = |problem: String| OnnxError::ExternalData {
                path: path.clone(),
                tensor: tensor.name().to_string(),
                problem,
            };
            let entries: HashMap<&str, &str> = tensor.external_data.iter().map(|e| (e.key(), e.value())).collect();
            let location = entries.get("location").ok_or_else(|| err("no 'location' entry".into()))?;
            let location = Path::new(location);
            if location.is_absolute() || location.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                return Err(err(format!("location '{}' points outside the model's directory", location.display())));
            }
            let parse = |key: &str| -> Result<Option<usize>, OnnxError> {
                entries.get(key).map(|v| v.parse::<usize>().map_err(|_| err(format!("bad {key} '{v}'")))).transpose()
            };
            let offset = parse("offset")?.unwrap_or(0);
            let length = parse("length")?;
            let file = dir.join(location);
            if !files.contains_key(&file) {
                let data = fs::read(&file).map_err(|e| err(format!("cannot read {}: {e}", file.display())))?;
                files.insert(file.clone(), data);
            }
            let data = &files[&file];
            let end = match length {
                Some(len) => offset.checked_add(len),
                None => Some(data.len()),
            };
            let bytes = end.and_then(|end| data.get(offset..end)).ok_or_else(|| {
                err(format!(
                    "offset {offset} length {length:?} is past the end of {} ({} bytes)",
                    file.display(),
                    data.len()
                ))
            })?;
            tensor.raw_data = Some(bytes.to_vec());
            tensor.external_data.clear();
            tensor.data_location = None;
        }
        Ok(())
    }

    /// Writes the model atomically (temporary file, then rename): a failure
    /// never leaves a partial model behind.
    pub fn save(&self, path: impl AsRef<Path>, placement: &DataPlacement) -> Result<(), OnnxError> {
        let path = path.as_ref();
        let write_err = |source| OnnxError::Write { path: path.into(), source };
        let mut proto = self.proto.clone();
        let mut sidecar = None;
        if let DataPlacement::External { min_bytes } = placement {
            let file_name = path
                .file_name()
                .ok_or_else(|| write_err(std::io::Error::other("no file name")))?
                .to_string_lossy()
                .to_string();
            let location = format!("{file_name}.data");
            let mut data = Vec::new();
            for tensor in all_tensors_mut(&mut proto) {
                let Some(raw) = tensor.raw_data.as_ref().filter(|r| r.len() >= *min_bytes) else {
                    continue;
                };
                // 4 KiB alignment lets runtimes memory-map tensors.
                data.resize(data.len().next_multiple_of(4096), 0);
                let entry = |k: &str, v: String| StringStringEntryProto { key: Some(k.into()), value: Some(v) };
                tensor.external_data = vec![
                    entry("location", location.clone()),
                    entry("offset", data.len().to_string()),
                    entry("length", raw.len().to_string()),
                ];
                data.extend_from_slice(raw);
                tensor.raw_data = None;
                tensor.data_location = Some(DataLocation::External as i32);
            }
            sidecar = Some((path.with_file_name(location), data));
        }
        let bytes = proto.encode_to_vec();
        if bytes.len() > PROTOBUF_LIMIT {
            return Err(OnnxError::Invalid {
                path: path.into(),
                problem: format!(
                    "model is {} bytes, over protobuf's 2 GiB limit; write it with external data",
                    bytes.len()
                ),
            });
        }
        // Data first: a model file is only visible once everything it points to is.
        if let Some((data_path, data)) = sidecar {
            write_atomically(&data_path, &data)?;
        }
        write_atomically(path, &bytes)
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and
/// a rename, so readers see either the old file or the complete new one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), OnnxError> {
    write_atomically_with(path, |f| f.write_all(bytes)).map_err(|source| OnnxError::Write { path: path.into(), source })
}

/// [`write_atomically`] for a writer that streams: `write` fills the
/// temporary file, which is synced and renamed to `path` only if it succeeds.
pub fn write_atomically_with<T>(
    path: &Path,
    write: impl FnOnce(&mut fs::File) -> std::io::Result<T>,
) -> std::io::Result<T> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    // Temporary files are private (0600); the result is an ordinary file
    // (0644 before the umask), as any other tool would write it.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
    let mut tmp = builder.tempfile_in(dir)?;
    let written = write(tmp.as_file_mut())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(written)
}

/// Every tensor of the model: initializers, Constant node attributes, and the
/// same inside subgraphs (If/Loop bodies).
fn all_tensors_mut(model: &mut ModelProto) -> Vec<&mut TensorProto> {
    fn graph_tensors<'a>(g: &'a mut proto::GraphProto, out: &mut Vec<&'a mut TensorProto>) {
        out.extend(g.initializer.iter_mut());
        for node in g.node.iter_mut() {
            for attr in node.attribute.iter_mut() {
                if let Some(t) = attr.t.as_mut() {
                    out.push(t);
                }
                out.extend(attr.tensors.iter_mut());
                if let Some(sub) = attr.g.as_mut() {
                    graph_tensors(sub, out);
                }
                for sub in attr.graphs.iter_mut() {
                    graph_tensors(sub, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    if let Some(g) = model.graph.as_mut() {
        graph_tensors(g, &mut out);
    }
    out
}
