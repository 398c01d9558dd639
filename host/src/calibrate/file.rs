//! Statistics files: the sufficient statistics of a capture (or a shard of
//! one) and what they were captured from, so `rba analyze`, `rba compact`
//! and `rba stats merge` can use them instead of streaming the images again.
//! The format is documented field by field in host/STATS.md.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! offset  size  content
//! 0       8     magic "RBASTATS"
//! 8       4     format version (u32), FORMAT_VERSION
//! 12      8     payload length P (u64)
//! 20      P     payload: postcard encoding of StatsFile { provenance, statistics }
//! 20+P    32    SHA-256 of the payload
//! ```

use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::shard::Shard;
use super::Statistics;
use crate::data::{Dataset, Holdout, Preprocess};
use crate::model::Model;

/// The first 8 bytes of every statistics file.
pub const MAGIC: [u8; 8] = *b"RBASTATS";
/// The version of the layout and of the payload's types; any change to
/// either bumps it.
pub const FORMAT_VERSION: u32 = 1;
const PREFIX_BYTES: usize = 8 + 4 + 8;
const CHECKSUM_BYTES: usize = 32;

/// A statistics file's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatsFile {
    pub provenance: Provenance,
    pub statistics: Statistics,
}

/// What the statistics were captured from and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// `rba <version>` that wrote the file.
    pub tool: String,
    pub model: ModelId,
    /// Boundary tensors, in data-flow order.
    pub boundaries: Vec<String>,
    /// Spans of up to this many blocks have statistics.
    pub max_span: usize,
    /// The fold sites with statistics; `None`: fold statistics not captured.
    pub fold_sites: Option<Vec<FoldSite>>,
    /// The resolved preprocessing of the images.
    pub preprocess: Preprocess,
    pub data: DataId,
    /// Images per forward pass.
    pub batch: usize,
    /// Images per group (the unit of flushing and of sharding).
    pub group_images: usize,
    pub shards: Shards,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelId {
    /// The model as given (path or `demo:vit`), for messages only.
    pub name: String,
    /// Lower-case hex SHA-256 of the model's bytes as loaded
    /// (`OnnxModel::to_bytes`: external data inlined).
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoldSite {
    pub boundary: usize,
    pub branch: String,
}

/// The calibration images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataId {
    /// `--data` as given.
    pub spec: String,
    /// The calibration set's name (e.g. `demo:train`, or the folder).
    pub calibration: String,
    /// [`Dataset::fingerprint`] of the whole calibration set (all shards).
    pub fingerprint: String,
    /// Images in the whole calibration set (all shards).
    pub images: usize,
    /// `--holdout`, `--seed`, `--samples`.
    pub holdout: String,
    pub seed: u64,
    pub samples: usize,
}

/// Which shards of the calibration set the statistics hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shards {
    /// N of `--shard I/N` (1 for a one-shot capture).
    pub count: usize,
    /// The shard indices held, ascending (all of `0..count` when complete).
    pub indices: Vec<usize>,
}

impl Shards {
    pub fn one(shard: Shard) -> Shards {
        Shards { count: shard.count, indices: vec![shard.index] }
    }

    pub fn is_complete(&self) -> bool {
        self.indices.len() == self.count && self.indices.iter().enumerate().all(|(k, &i)| k == i)
    }

    /// The indices of `0..count` not held.
    pub fn missing(&self) -> Vec<usize> {
        (0..self.count).filter(|i| !self.indices.contains(i)).collect()
    }

    /// `2/4`, `0,1,3 of 4`, or `all 4`.
    pub fn describe(&self) -> String {
        match (self.is_complete(), self.indices.as_slice()) {
            (true, _) if self.count == 1 => "one-shot".into(),
            (true, _) => format!("all {} shards", self.count),
            (false, [i]) => format!("shard {i}/{}", self.count),
            (false, ids) => format!("shards {} of {}", list(ids), self.count),
        }
    }
}

fn list(ids: &[usize]) -> String {
    ids.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
}

#[derive(Debug, thiserror::Error)]
pub enum StatsFileError {
    #[error("{path}: cannot read: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: cannot write: {reason}")]
    Write { path: String, reason: String },
    #[error("{path} is not an rba statistics file (it does not start with \"RBASTATS\")")]
    NotStats { path: String },
    #[error("{path} is statistics format version {found}; this rba reads version {FORMAT_VERSION}: capture again with this rba")]
    Version { path: String, found: u32 },
    #[error("{path} is truncated (expected {expected} bytes, found {found})")]
    Truncated { path: String, expected: u64, found: u64 },
    #[error("{path} has {extra} unexpected bytes after its checksum (expected {expected} bytes, found {found})")]
    Trailing { path: String, expected: u64, found: u64, extra: u64 },
    #[error(
        "{path}: checksum mismatch: the payload's SHA-256 is {found}, the file says {expected} (the file is corrupted)"
    )]
    Checksum { path: String, expected: String, found: String },
    #[error("{path}: the payload does not decode ({reason}); the checksum matched, so it was written by an incompatible rba")]
    Decode { path: String, reason: String },
    #[error("{0}")]
    Mismatch(String),
}

/// A reader or writer that hashes (and counts) what passes through.
struct Hashing<T> {
    inner: T,
    hasher: Sha256,
    bytes: u64,
}

impl<T> Hashing<T> {
    fn new(inner: T) -> Self {
        Hashing { inner, hasher: Sha256::new(), bytes: 0 }
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Lower-case hex SHA-256 of the model's bytes as loaded.
pub fn model_sha256(model: &Model) -> String {
    rba_protocol::hex(&Sha256::digest(model.onnx.to_bytes()))
}

/// The first 12 hex digits, for messages.
fn short(sha: &str) -> String {
    format!("{}…", &sha[..12.min(sha.len())])
}

impl DataId {
    /// The calibration set as `rba calibrate`, `analyze` and `compact` draw
    /// it: `calibration` is the whole set (before sharding).
    pub fn new(spec: &str, calibration: &Dataset, holdout: Holdout, seed: u64, samples: usize) -> DataId {
        DataId {
            spec: spec.to_string(),
            calibration: calibration.name().to_string(),
            fingerprint: calibration.fingerprint(),
            images: calibration.len(),
            holdout: holdout.to_string(),
            seed,
            samples,
        }
    }
}

/// How a message names the two sides of a comparison.
struct Sides {
    /// "stats.bin was captured" / "a.bin and b.bin were captured".
    subject: String,
    /// "stats.bin was captured" / "a.bin was captured".
    model_subject: String,
    /// Before the second model: "this is" / "b.bin from".
    other_model: String,
    /// After a list of `x vs y`: "(the file's vs this command's)" / "(a.bin vs b.bin)".
    order: String,
}

impl Sides {
    fn file_vs_command(path: &str) -> Sides {
        Sides {
            subject: format!("{path} was captured"),
            model_subject: format!("{path} was captured"),
            other_model: "this is".into(),
            order: "(the file's vs this command's)".into(),
        }
    }

    fn two_files(a: &str, b: &str) -> Sides {
        Sides {
            subject: format!("{a} and {b} were captured"),
            model_subject: format!("{a} was captured"),
            other_model: format!("{b} from"),
            order: format!("({a} vs {b})"),
        }
    }
}

/// What differs between the captures behind two provenances (model,
/// boundaries, preprocessing, calibration images), as one message; `None`
/// when they agree.
fn differences(a: &Provenance, b: &Provenance, sides: &Sides) -> Option<String> {
    let Sides { subject, model_subject, other_model, order } = sides;
    if a.model.sha256 != b.model.sha256 {
        return Some(format!(
            "{model_subject} from a model with SHA-256 {} ({}), {other_model} {} ({}): another model",
            short(&a.model.sha256),
            a.model.name,
            short(&b.model.sha256),
            b.model.name
        ));
    }
    if a.boundaries != b.boundaries {
        let first = a.boundaries.iter().zip(&b.boundaries).position(|(x, y)| x != y);
        let detail = match first {
            Some(k) => format!("boundary {k} is '{}' vs '{}'", a.boundaries[k], b.boundaries[k]),
            None => format!("{} vs {} boundaries", a.boundaries.len(), b.boundaries.len()),
        };
        return Some(format!("{subject} at other boundaries: {detail} {order} (--boundaries)"));
    }
    if a.preprocess != b.preprocess {
        return Some(format!(
            "{subject} with other preprocessing: {} {order}",
            preprocess_differences(&a.preprocess, &b.preprocess)
        ));
    }
    if a.data.fingerprint != b.data.fingerprint || a.data.images != b.data.images {
        let (x, y) = (&a.data, &b.data);
        let mut why = Vec::new();
        if x.calibration != y.calibration {
            why.push(format!("data {} vs {}", x.calibration, y.calibration));
        }
        if x.images != y.images {
            why.push(format!("{} vs {} images", x.images, y.images));
        }
        if x.holdout != y.holdout {
            why.push(format!("--holdout {} vs {}", x.holdout, y.holdout));
        }
        if x.seed != y.seed {
            why.push(format!("--seed {} vs {}", x.seed, y.seed));
        }
        if x.samples != y.samples {
            why.push(format!("--samples {} vs {}", x.samples, y.samples));
        }
        if why.is_empty() {
            why.push(format!(
                "image names with fingerprint {} vs {} (other files in the data source)",
                short(&x.fingerprint),
                short(&y.fingerprint)
            ));
        }
        return Some(format!("{subject} on other calibration images: {} {order}", why.join(", ")));
    }
    None
}

/// The preprocessing fields that differ, `name a vs b`.
fn preprocess_differences(a: &Preprocess, b: &Preprocess) -> String {
    let mut out = Vec::new();
    let mut field = |name: &str, x: String, y: String| {
        if x != y {
            out.push(format!("{name} {x} vs {y}"));
        }
    };
    field("resize", format!("{:?}", a.resize), format!("{:?}", b.resize));
    field("crop", format!("{:?}", a.crop), format!("{:?}", b.crop));
    field("scale", format!("{}", a.scale), format!("{}", b.scale));
    field("mean", format!("{:?}", a.mean), format!("{:?}", b.mean));
    field("std", format!("{:?}", a.std), format!("{:?}", b.std));
    field("layout", a.layout.to_string(), b.layout.to_string());
    field("channels", a.channels.to_string(), b.channels.to_string());
    field("size", format!("{:?}", a.size), format!("{:?}", b.size));
    field("model input", format!("{:?}", a.model_input), format!("{:?}", b.model_input));
    out.join(", ")
}

/// What a command that reads a statistics file needs from it.
#[derive(Debug, Clone)]
pub struct Needs {
    /// Statistics of spans up to this many blocks.
    pub max_span: usize,
    /// Fold statistics at these sites (`None`: not needed).
    pub fold_sites: Option<Vec<FoldSite>>,
}

impl StatsFile {
    /// Writes the file's bytes (see the module docs) to `out`, streaming the
    /// payload (no second copy of the statistics in memory); returns the
    /// number of bytes written.
    pub fn write_to<W: Write + Seek>(&self, mut out: W) -> std::io::Result<u64> {
        out.write_all(&MAGIC)?;
        out.write_all(&FORMAT_VERSION.to_le_bytes())?;
        out.write_all(&[0u8; 8])?;
        let mut body = BufWriter::with_capacity(1 << 20, Hashing::new(&mut out));
        postcard::to_io(self, &mut body).map_err(std::io::Error::other)?;
        body.flush()?;
        let hashing = body.into_inner().map_err(|e| e.into_error())?;
        let (payload, digest) = (hashing.bytes, hashing.hasher.finalize());
        out.write_all(&digest)?;
        out.seek(SeekFrom::Start(12))?;
        out.write_all(&payload.to_le_bytes())?;
        out.seek(SeekFrom::End(0))?;
        Ok(PREFIX_BYTES as u64 + payload + CHECKSUM_BYTES as u64)
    }

    /// The file's bytes (see the module docs).
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        let mut buf = std::io::Cursor::new(Vec::new());
        self.write_to(&mut buf).map_err(|e| e.to_string())?;
        Ok(buf.into_inner())
    }

    /// Writes the file (to a temporary file in the same folder, then
    /// renamed, so a failure never leaves a partial file); returns its size.
    pub fn write(&self, path: &Path) -> Result<u64, StatsFileError> {
        let err = |e: std::io::Error| StatsFileError::Write { path: path.display().to_string(), reason: e.to_string() };
        rba_onnx::write_atomically_with(path, |f| self.write_to(f)).map_err(err)
    }

    /// Reads and verifies a file: magic, version, length, checksum, payload
    /// (streamed: no second copy of the statistics in memory).
    pub fn read(path: &Path) -> Result<StatsFile, StatsFileError> {
        let shown = path.display().to_string();
        let io = |source| StatsFileError::Read { path: shown.clone(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        Self::read_from(file, len, &shown)
    }

    /// Decodes a file's bytes; `origin` names it in errors.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<StatsFile, StatsFileError> {
        Self::read_from(bytes, bytes.len() as u64, origin)
    }

    /// Decodes `found` bytes from `input`; `origin` names them in errors.
    fn read_from(mut input: impl Read, found: u64, origin: &str) -> Result<StatsFile, StatsFileError> {
        let path = origin.to_string();
        let io = |source| StatsFileError::Read { path: path.clone(), source };
        let mut prefix = [0u8; PREFIX_BYTES];
        let have = (found as usize).min(PREFIX_BYTES);
        input.read_exact(&mut prefix[..have]).map_err(io)?;
        let prefix = &prefix[..have];
        if prefix.len() < MAGIC.len() || prefix[..MAGIC.len()] != MAGIC {
            // A prefix of the magic is a truncated file, anything else is not ours.
            if !prefix.is_empty() && MAGIC.starts_with(prefix) {
                return Err(StatsFileError::Truncated { path, expected: PREFIX_BYTES as u64, found });
            }
            return Err(StatsFileError::NotStats { path });
        }
        if prefix.len() < PREFIX_BYTES {
            return Err(StatsFileError::Truncated { path, expected: PREFIX_BYTES as u64, found });
        }
        let mut word = [0u8; 4];
        word.copy_from_slice(&prefix[8..12]);
        let version = u32::from_le_bytes(word);
        if version != FORMAT_VERSION {
            return Err(StatsFileError::Version { path, found: version });
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&prefix[12..PREFIX_BYTES]);
        let payload = u64::from_le_bytes(len);
        let expected = payload.saturating_add((PREFIX_BYTES + CHECKSUM_BYTES) as u64);
        if found < expected {
            return Err(StatsFileError::Truncated { path, expected, found });
        }
        if found > expected {
            return Err(StatsFileError::Trailing { path, expected, found, extra: found - expected });
        }
        // Decode while hashing; the checksum is judged first, so damage
        // reads as damage even where it also breaks the decoding.
        let mut body = BufReader::with_capacity(1 << 20, Hashing::new((&mut input).take(payload)));
        let mut scratch = vec![0u8; 1 << 16];
        let decoded = postcard::from_io::<StatsFile, _>((&mut body, &mut scratch)).map(|(f, _)| f);
        let left = std::io::copy(&mut body, &mut std::io::sink()).map_err(io)?;
        let hashing = body.into_inner();
        let digest = hashing.hasher.finalize();
        let mut stored = [0u8; CHECKSUM_BYTES];
        input.read_exact(&mut stored).map_err(io)?;
        if digest.as_slice() != stored {
            return Err(StatsFileError::Checksum {
                path,
                expected: rba_protocol::hex(&stored),
                found: rba_protocol::hex(&digest),
            });
        }
        let file = decoded.map_err(|e| StatsFileError::Decode { path: path.clone(), reason: e.to_string() })?;
        if left > 0 {
            return Err(StatsFileError::Decode { path, reason: format!("{left} bytes follow the statistics") });
        }
        Ok(file)
    }

    /// Checks that the file serves a command on `expected`'s model,
    /// boundaries, preprocessing and calibration images (shards and batch
    /// aside) with `needs`, and that it holds every shard; on success,
    /// returns its statistics cut to what a capture for `needs` would hold
    /// (spans up to `needs.max_span`, fold statistics only when needed).
    pub fn statistics_for(
        self,
        path: &str,
        expected: &Provenance,
        needs: &Needs,
    ) -> Result<Statistics, StatsFileError> {
        let p = &self.provenance;
        if let Some(why) = differences(p, expected, &Sides::file_vs_command(path)) {
            return Err(StatsFileError::Mismatch(why));
        }
        if !p.shards.is_complete() {
            return Err(StatsFileError::Mismatch(format!(
                "{path} holds {} of the calibration images: merge all shards first with `rba stats merge` (missing {})",
                p.shards.describe(),
                list(&p.shards.missing())
            )));
        }
        if p.max_span < needs.max_span {
            return Err(StatsFileError::Mismatch(format!(
                "{path} holds spans of up to {} blocks, this needs {} (--max-span): capture with `rba calibrate --max-span {}` or pass --max-span {}",
                p.max_span, needs.max_span, needs.max_span, p.max_span
            )));
        }
        let mut stats = self.statistics;
        match (&needs.fold_sites, &p.fold_sites) {
            (None, _) => stats.drop_branches(),
            (Some(_), None) => {
                return Err(StatsFileError::Mismatch(format!(
                    "{path} holds no fold statistics (captured with --no-fold); folded and auto translators need them: \
                     capture without --no-fold"
                )))
            }
            (Some(want), Some(have)) if want != have => {
                return Err(StatsFileError::Mismatch(format!(
                    "{path} holds fold statistics at boundaries {:?}, this model has fold sites at {:?}",
                    have.iter().map(|s| s.boundary).collect::<Vec<_>>(),
                    want.iter().map(|s| s.boundary).collect::<Vec<_>>()
                )))
            }
            _ => {}
        }
        stats.restrict_spans(needs.max_span);
        Ok(stats)
    }

    /// Adds the files' statistics in the order given, after checking that
    /// they are shards of one capture: the same model, boundaries,
    /// preprocessing, calibration images, batch, max span and fold sites,
    /// the same shard count, no shard twice. Files are read one at a time.
    /// Returns the merged file; whether it is complete is
    /// [`Shards::is_complete`] of its provenance.
    pub fn merge_files(paths: &[&Path]) -> Result<StatsFile, StatsFileError> {
        let mut merged: Option<(StatsFile, String)> = None;
        let mut holder: Vec<(usize, String)> = Vec::new();
        for path in paths {
            let shown = path.display().to_string();
            let file = StatsFile::read(path)?;
            for &i in &file.provenance.shards.indices {
                if let Some((_, first)) = holder.iter().find(|(j, _)| *j == i) {
                    return Err(StatsFileError::Mismatch(format!(
                        "{first} and {shown} both hold shard {i}/{}: merging both would count its images twice",
                        file.provenance.shards.count
                    )));
                }
                holder.push((i, shown.clone()));
            }
            merged = Some(match merged {
                None => (file, shown),
                Some((mut acc, first)) => {
                    check_mergeable(&acc.provenance, &file.provenance, &first, &shown)?;
                    acc.statistics
                        .merge(&file.statistics)
                        .map_err(|e| StatsFileError::Mismatch(format!("{first} and {shown}: {e}")))?;
                    acc.provenance.shards.indices.extend(&file.provenance.shards.indices);
                    acc.provenance.shards.indices.sort_unstable();
                    (acc, first)
                }
            });
        }
        let (mut file, _) = merged.ok_or_else(|| StatsFileError::Mismatch("no statistics files to merge".into()))?;
        file.provenance.tool = tool();
        Ok(file)
    }
}

/// Whether two shard files can be added (all but the shard indices agree).
fn check_mergeable(a: &Provenance, b: &Provenance, a_path: &str, b_path: &str) -> Result<(), StatsFileError> {
    if let Some(why) = differences(a, b, &Sides::two_files(a_path, b_path)) {
        return Err(StatsFileError::Mismatch(why));
    }
    let mut why = Vec::new();
    if a.shards.count != b.shards.count {
        why.push(format!("{} shards vs {} shards (--shard I/N)", a.shards.count, b.shards.count));
    }
    if a.batch != b.batch || a.group_images != b.group_images {
        why.push(format!("--batch {} vs {} (shards are made of whole batches)", a.batch, b.batch));
    }
    if a.max_span != b.max_span {
        why.push(format!("--max-span {} vs {}", a.max_span, b.max_span));
    }
    if a.fold_sites != b.fold_sites {
        why.push("fold statistics (--no-fold) differ".into());
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(StatsFileError::Mismatch(format!(
            "{a_path} and {b_path} are not shards of one capture: {}",
            why.join(", ")
        )))
    }
}

/// `rba <version>`.
pub fn tool() -> String {
    format!("rba {}", env!("CARGO_PKG_VERSION"))
}

impl Provenance {
    /// The fold sites of `model` as recorded.
    pub fn fold_sites(model: &Model) -> Vec<FoldSite> {
        super::fold_sites(model).into_iter().map(|(boundary, branch)| FoldSite { boundary, branch }).collect()
    }

    /// A one-line summary for the terminal.
    pub fn summary(&self, images: usize) -> String {
        format!(
            "{} images ({} of {} calibration images from {}, --holdout {} --seed {} --samples {}), model {} (SHA-256 {}), \
             {} boundaries, spans up to {} blocks, {}, batch {}",
            images,
            self.shards.describe(),
            self.data.images,
            self.data.calibration,
            self.data.holdout,
            self.data.seed,
            self.data.samples,
            self.model.name,
            short(&self.model.sha256),
            self.boundaries.len(),
            self.max_span,
            match &self.fold_sites {
                Some(s) => format!("fold statistics at {} sites", s.len()),
                None => "no fold statistics".into(),
            },
            self.batch
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::calibrate::{capture, CaptureOptions};
    use crate::data::{Hw, Layout, Resize};
    use crate::progress::Silent;
    use rba_testkit_free::token_model_with_noise;

    /// A tiny model and its statistics, without the test kit (a unit test
    /// cannot depend on rba-testkit, which depends on this crate).
    mod rba_testkit_free {
        use crate::model::run::nd;

        pub fn token_model_with_noise(images: usize) -> (crate::model::Model, nd::ArrayD<f32>) {
            let model = crate::model::Model::new(crate::demo::DemoModel::Vit.load().unwrap(), None).unwrap();
            let mut s = 7u64;
            let x = nd::ArrayD::from_shape_fn(vec![images, 1, 8, 8], |_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32
            });
            (model, x)
        }
    }

    fn provenance(model: &Model) -> Provenance {
        Provenance {
            tool: tool(),
            model: ModelId { name: "demo:vit".into(), sha256: model_sha256(model) },
            boundaries: model.blocks.boundaries.clone(),
            max_span: 1,
            fold_sites: None,
            preprocess: Preprocess {
                resize: Resize::None,
                crop: None,
                scale: 1.0 / 16.0,
                mean: vec![0.0],
                std: vec![1.0],
                layout: Layout::Nchw,
                channels: 1,
                size: Some(Hw::new(8, 8)),
                model_input: Some(vec![1, 1, 8, 8]),
            },
            data: DataId {
                spec: "noise".into(),
                calibration: "noise".into(),
                fingerprint: "ab".repeat(32),
                images: 12,
                holdout: "0.2".into(),
                seed: 0,
                samples: 500,
            },
            batch: 4,
            group_images: 4,
            shards: Shards::one(Shard::WHOLE),
        }
    }

    fn small_file() -> StatsFile {
        let (model, x) = token_model_with_noise(12);
        let options = CaptureOptions { batch: 4, max_span: 1, threads: 1, fold: false, ..Default::default() };
        let stats = capture(&model, [Ok::<_, String>(x)], Some(12), &options, &Silent).unwrap();
        StatsFile { provenance: provenance(&model), statistics: stats }
    }

    #[test]
    fn files_round_trip_bit_for_bit_and_refuse_damage() {
        let file = small_file();
        let bytes = file.to_bytes().unwrap();
        assert_eq!(&bytes[..8], b"RBASTATS");
        let back = StatsFile::from_bytes(&bytes, "s.bin").unwrap();
        assert_eq!(back.provenance, file.provenance);
        assert_eq!(back.to_bytes().unwrap(), bytes, "decoding and encoding again gives the same bytes");
        let n = bytes.len() as u64;

        let err = StatsFile::from_bytes(&bytes[..bytes.len() - 100], "s.bin").unwrap_err();
        assert_eq!(err.to_string(), format!("s.bin is truncated (expected {n} bytes, found {})", n - 100));
        let err = StatsFile::from_bytes(&bytes[..10], "s.bin").unwrap_err();
        assert!(err.to_string().contains("is truncated (expected 20 bytes, found 10)"), "{err}");
        let err = StatsFile::from_bytes(&bytes[..5], "s.bin").unwrap_err();
        assert!(matches!(err, StatsFileError::Truncated { .. }), "{err}");

        let mut flipped = bytes.clone();
        flipped[bytes.len() / 2] ^= 0x10;
        let err = StatsFile::from_bytes(&flipped, "s.bin").unwrap_err();
        assert!(err.to_string().starts_with("s.bin: checksum mismatch"), "{err}");

        let mut longer = bytes.clone();
        longer.extend_from_slice(b"junk");
        let err = StatsFile::from_bytes(&longer, "s.bin").unwrap_err();
        assert!(err.to_string().contains("4 unexpected bytes after its checksum"), "{err}");

        let mut other = bytes.clone();
        other[8] = 2;
        let err = StatsFile::from_bytes(&other, "s.bin").unwrap_err();
        assert!(err.to_string().contains("format version 2; this rba reads version 1"), "{err}");
        let err = StatsFile::from_bytes(b"\x08\x01onnx model", "m.onnx").unwrap_err();
        assert!(matches!(err, StatsFileError::NotStats { .. }), "{err}");
    }

    /// The encoding of version 1, pinned: if this digest changes, the
    /// payload's types changed; bump FORMAT_VERSION, update host/STATS.md
    /// and this digest.
    #[test]
    fn format_version_1_is_pinned() {
        use crate::calibrate::statistics::{BoundaryStats, BranchStats, FoldTarget, SpanResidue, SpanStats};
        use crate::fit::{Cross, Moments};
        use crate::model::blocks::FeatureLayout;
        // A hand-built file of two boundaries with D = 2, one span, one fold site.
        let moments = |k: f64| {
            let mut m = Moments::new(2);
            m.update(&[k as f32, 1.0, 2.0, -k as f32], faer::Par::Seq);
            m
        };
        let cross = |k: f32| {
            let mut c = Cross::new(2, 2);
            c.update(&[k, 1.0], &[0.5, k], faer::Par::Seq);
            c
        };
        let boundary = |name: &str, k: f64| BoundaryStats {
            name: name.into(),
            shape: vec![1, 3, 2],
            layout: FeatureLayout::Last,
            tokens: moments(k),
            images: moments(k + 1.0),
        };
        let statistics = Statistics {
            images: 2,
            boundaries: vec![boundary("a", 1.0), boundary("b", 2.0)],
            spans: vec![SpanStats {
                start: 0,
                end: 1,
                cross: cross(3.0),
                cosine_sum: 1.5,
                angle_sum: 0.25,
                token_dist_sq: 7.0,
                image_dist_sq: 3.0,
                residue: SpanResidue { cosine_sum: 1e-17, ..Default::default() },
            }],
            image_cross: vec![cross(4.0)],
            sample_cosine_sum: vec![Some(1.75)],
            sample_cosine_residue: vec![0.0],
            branches: vec![BranchStats {
                boundary: 1,
                tensor: "m".into(),
                moments: moments(5.0),
                targets: vec![FoldTarget { end: 1, moments: moments(6.0), cross: cross(7.0) }],
            }],
        };
        let mut provenance =
            provenance(&crate::model::Model::new(crate::demo::DemoModel::Vit.load().unwrap(), None).unwrap());
        provenance.tool = "rba test".into();
        provenance.model.sha256 = "3ae0".repeat(16);
        provenance.boundaries = vec!["a".into(), "b".into()];
        provenance.fold_sites = Some(vec![FoldSite { boundary: 1, branch: "m".into() }]);
        provenance.shards = Shards { count: 4, indices: vec![1, 3] };
        let file = StatsFile { provenance, statistics };
        let bytes = file.to_bytes().unwrap();
        assert_eq!(&bytes[..12], b"RBASTATS\x01\x00\x00\x00");
        assert_eq!(u64::from_le_bytes(bytes[12..20].try_into().unwrap()), bytes.len() as u64 - 52);
        let digest = rba_protocol::hex(&Sha256::digest(&bytes));
        assert_eq!(digest, "4ce0249a79980673777470e18fe0d501113bfd24c0e3099c05e090502f50d7ed", "{} bytes", bytes.len());
        let back = StatsFile::from_bytes(&bytes, "pinned.bin").unwrap();
        assert_eq!(back.to_bytes().unwrap(), bytes);
        assert_eq!(back.statistics.spans[0].residue.cosine_sum, 1e-17);
    }

    #[test]
    fn a_file_for_another_capture_says_what_differs() {
        let file = small_file();
        let needs = Needs { max_span: 1, fold_sites: None };
        let same = file.provenance.clone();
        file.clone().statistics_for("s.bin", &same, &needs).unwrap();

        let mut other = same.clone();
        other.model.sha256 = "29ef".repeat(16);
        let err = file.clone().statistics_for("s.bin", &other, &needs).unwrap_err().to_string();
        assert!(err.starts_with("s.bin was captured from a model with SHA-256 "), "{err}");
        assert!(err.contains(", this is 29ef29ef29ef… (demo:vit): another model"), "{err}");

        let mut other = same.clone();
        other.boundaries[2] = "x".into();
        let err = file.clone().statistics_for("s.bin", &other, &needs).unwrap_err().to_string();
        assert!(err.starts_with("s.bin was captured at other boundaries: boundary 2 is '"), "{err}");
        assert!(err.ends_with("' vs 'x' (the file's vs this command's) (--boundaries)"), "{err}");

        let mut other = same.clone();
        other.preprocess.scale = 0.125;
        let err = file.clone().statistics_for("s.bin", &other, &needs).unwrap_err().to_string();
        assert_eq!(
            err,
            "s.bin was captured with other preprocessing: scale 0.0625 vs 0.125 (the file's vs this command's)"
        );

        let mut other = same.clone();
        other.data.seed = 3;
        other.data.fingerprint = "cd".repeat(32);
        let err = file.clone().statistics_for("s.bin", &other, &needs).unwrap_err().to_string();
        assert!(err.ends_with("on other calibration images: --seed 0 vs 3 (the file's vs this command's)"), "{err}");

        let err = file.clone().statistics_for("s.bin", &same, &Needs { max_span: 2, fold_sites: None }).unwrap_err();
        assert!(err.to_string().contains("holds spans of up to 1 blocks, this needs 2"), "{err}");
        let err = file.clone().statistics_for("s.bin", &same, &Needs { max_span: 1, fold_sites: Some(vec![]) });
        assert!(err.unwrap_err().to_string().contains("holds no fold statistics"));

        let mut partial = file.clone();
        partial.provenance.shards = Shards { count: 4, indices: vec![0, 2] };
        let err = partial.statistics_for("s.bin", &same, &needs).unwrap_err().to_string();
        assert!(
            err.contains("holds shards 0, 2 of 4 of the calibration images") && err.ends_with("(missing 1, 3)"),
            "{err}"
        );
    }
}
