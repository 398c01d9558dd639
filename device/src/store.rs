//! The board's artifact store: a directory of its own.
//!
//! ```text
//! <root>/models/<name>          published ONNX models
//! <root>/bundles/<name>         published eval bundles
//! <root>/staging/upload.part    bytes of the upload in progress (at most one)
//! <root>/staging/upload.json    what they are: kind, name, size, SHA-256
//! <root>/apps/<app>/...         applications and their active models ([`crate::apps`])
//! ```
//!
//! An upload only ever writes under `staging/`; publishing is an fsync and a
//! `rename` into `models/` or `bundles/`, so a name never shows a partial or
//! unverified artifact, whatever happens to the process. The staging survives
//! restarts: an upload of the same kind, name, size and digest resumes from
//! the staged length. Names are validated again here (no paths), and a quota
//! bounds the bytes held (published plus staged), as does the file system's
//! free space.
//!
//! Errors name artifacts ("cannot read model 'x'"), never file system paths:
//! they reach the host.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rba_protocol::{hex, is_valid_name, ArtifactInfo, ArtifactKind, RemoteError, Sha256Digest, UploadBegin};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::apps::Apps;

const PART: &str = "upload.part";
const SIDECAR: &str = "upload.json";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid artifact name {0:?}: use [A-Za-z0-9._-]{{1,64}}, not starting with '.'")]
    InvalidName(String),
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    #[error("quota exceeded: {size} bytes do not fit, {available} of {quota} bytes are free")]
    Quota { size: u64, available: u64, quota: u64 },
    #[error("the disk is full: {size} bytes do not fit, {available} bytes are free")]
    DiskFull { size: u64, available: u64 },
    #[error("no upload is staged")]
    NoUpload,
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl From<StoreError> for RemoteError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::InvalidName(n) => RemoteError::InvalidName(n),
            StoreError::NotFound { name, .. } => RemoteError::NotFound(name),
            StoreError::Quota { size, available, .. } => RemoteError::TooLarge { size, max: available },
            StoreError::DiskFull { size, available } => RemoteError::TooLarge { size, max: available },
            StoreError::NoUpload => RemoteError::NoUpload,
            e @ StoreError::Io { .. } => RemoteError::Storage(e.to_string()),
        }
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

pub fn kind_label(kind: ArtifactKind) -> &'static str {
    match kind {
        ArtifactKind::Model => "model",
        ArtifactKind::EvalBundle => "eval bundle",
    }
}

/// "model 'x'", as errors name an artifact.
fn artifact(kind: ArtifactKind, name: &str) -> String {
    format!("{} '{name}'", kind_label(kind))
}

const STAGED: &str = "the staged upload";

/// What is staged, persisted next to the staged bytes so that a restarted
/// daemon can resume the upload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Sidecar {
    kind: ArtifactKind,
    name: String,
    size: u64,
    /// Lower-case hex.
    sha256: String,
}

impl Sidecar {
    fn of(b: &UploadBegin) -> Self {
        Sidecar { kind: b.kind, name: b.name.clone(), size: b.size, sha256: hex(&b.sha256) }
    }
}

fn unhex(s: &str) -> Option<Sha256Digest> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The upload being staged.
struct Staged {
    sidecar: Sidecar,
    sha256: Sha256Digest,
    /// Open for appending while the upload goes on.
    file: Option<File>,
}

/// Digest cache entry: valid while size and modification time are unchanged.
#[derive(Clone)]
struct Cached {
    size: u64,
    modified: Option<SystemTime>,
    sha256: Sha256Digest,
}

pub struct Store {
    root: PathBuf,
    quota: u64,
    staged: Option<Staged>,
    digests: HashMap<(ArtifactKind, String), Cached>,
    apps: Apps,
}

impl Store {
    /// Opens (creating) the store under `root`. Leftovers of a crash are
    /// cleaned up; a consistent staged upload is kept for resuming.
    pub fn open(root: impl Into<PathBuf>, quota: u64) -> Result<Store, StoreError> {
        let root = root.into();
        for d in ["models", "bundles", "staging"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_err(format!("cannot create the store's {d} directory")))?;
        }
        let apps = Apps::open(&root)?;
        let mut store = Store { root, quota, staged: None, digests: HashMap::new(), apps };
        store.recover()?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn quota(&self) -> u64 {
        self.quota
    }

    /// The applications and their active models.
    pub fn apps(&self) -> &Apps {
        &self.apps
    }

    fn dir(&self, kind: ArtifactKind) -> PathBuf {
        self.root.join(match kind {
            ArtifactKind::Model => "models",
            ArtifactKind::EvalBundle => "bundles",
        })
    }

    fn staging(&self) -> PathBuf {
        self.root.join("staging")
    }

    /// Path of a published artifact (the name is validated).
    pub fn path(&self, kind: ArtifactKind, name: &str) -> Result<PathBuf, StoreError> {
        if !is_valid_name(name) {
            return Err(StoreError::InvalidName(name.to_string()));
        }
        Ok(self.dir(kind).join(name))
    }

    /// Path of a published artifact that must exist.
    pub fn existing(&self, kind: ArtifactKind, name: &str) -> Result<PathBuf, StoreError> {
        let p = self.path(kind, name)?;
        if p.is_file() {
            Ok(p)
        } else {
            Err(StoreError::NotFound { kind: kind_label(kind), name: name.to_string() })
        }
    }

    pub fn read(&self, kind: ArtifactKind, name: &str) -> Result<Vec<u8>, StoreError> {
        let p = self.existing(kind, name)?;
        fs::read(&p).map_err(io_err(format!("cannot read {}", artifact(kind, name))))
    }

    /// Keeps a staged upload whose sidecar and data agree; removes
    /// anything else in `staging/`.
    fn recover(&mut self) -> Result<(), StoreError> {
        let staging = self.staging();
        let sidecar = fs::read(staging.join(SIDECAR))
            .ok()
            .and_then(|b| serde_json::from_slice::<Sidecar>(&b).ok())
            .filter(|s| is_valid_name(&s.name));
        let part_len = fs::metadata(staging.join(PART)).ok().map(|m| m.len());
        match (sidecar, part_len) {
            (Some(sidecar), Some(len)) if len <= sidecar.size => {
                if let Some(sha256) = unhex(&sidecar.sha256) {
                    self.staged = Some(Staged { sidecar, sha256, file: None });
                }
            }
            _ => {}
        }
        let keep: &[&str] = if self.staged.is_some() { &[PART, SIDECAR] } else { &[] };
        let entries = fs::read_dir(&staging).map_err(io_err("cannot list the staging directory"))?;
        for e in entries.flatten() {
            let name = e.file_name();
            if !keep.iter().any(|k| name == *k) {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(())
    }

    /// Bytes held: published artifacts, the applications' generations
    /// (a model hard-linked from `models/` counts once) and the staged upload.
    pub fn used(&self) -> u64 {
        let mut total = 0;
        let mut seen = HashSet::new();
        for kind in [ArtifactKind::Model, ArtifactKind::EvalBundle] {
            if let Ok(entries) = fs::read_dir(self.dir(kind)) {
                total += entries
                    .flatten()
                    .filter_map(|e| e.metadata().ok())
                    .filter(|m| m.is_file() && seen.insert((m.dev(), m.ino())))
                    .map(|m| m.len())
                    .sum::<u64>();
            }
        }
        total + self.apps.used(&mut seen) + self.staged_len()
    }

    /// Bytes that can still be stored: the quota left, or the file
    /// system's free space (for an unprivileged user) where that is smaller.
    pub fn free(&self) -> u64 {
        let quota_left = self.quota.saturating_sub(self.used());
        self.disk_available().map_or(quota_left, |disk| disk.min(quota_left))
    }

    /// Free bytes of the file system holding the store, for an
    /// unprivileged user (`statvfs`: available blocks times fragment size).
    pub fn disk_available(&self) -> Option<u64> {
        let st = nix::sys::statvfs::statvfs(&self.root).ok()?;
        let bytes = u128::from(st.blocks_available()) * u128::from(st.fragment_size());
        Some(u64::try_from(bytes).unwrap_or(u64::MAX))
    }

    fn staged_len(&self) -> u64 {
        fs::metadata(self.staging().join(PART)).map(|m| m.len()).unwrap_or(0)
    }

    /// What is staged, if anything: kind, name, size, digest and length so far.
    pub fn staged(&self) -> Option<(UploadBegin, u64)> {
        self.staged.as_ref().map(|s| {
            let b = UploadBegin {
                kind: s.sidecar.kind,
                name: s.sidecar.name.clone(),
                size: s.sidecar.size,
                sha256: s.sha256,
            };
            (b, self.staged_len().min(s.sidecar.size))
        })
    }

    /// Starts (or resumes) staging `target`; returns the resume offset.
    pub fn begin(&mut self, target: &UploadBegin) -> Result<u64, StoreError> {
        if !is_valid_name(&target.name) {
            return Err(StoreError::InvalidName(target.name.clone()));
        }
        if let Some((staged, len)) = self.staged() {
            if staged == *target {
                if let Some(s) = &mut self.staged {
                    s.file = None;
                }
                return Ok(len);
            }
        }
        self.discard()?;
        // Room for the whole artifact; a published one of the same name is
        // replaced on commit, so its bytes count as free.
        let replaced = fs::metadata(self.dir(target.kind).join(&target.name)).map(|m| m.len()).unwrap_or(0);
        let available = self.quota.saturating_sub(self.used().saturating_sub(replaced));
        if target.size > available {
            return Err(StoreError::Quota { size: target.size, available, quota: self.quota });
        }
        // The replaced artifact stays on disk until the commit's rename.
        if let Some(disk) = self.disk_available().filter(|&d| target.size > d) {
            return Err(StoreError::DiskFull { size: target.size, available: disk });
        }
        let staging = self.staging();
        let sidecar = Sidecar::of(target);
        let json = serde_json::to_vec(&sidecar).map_err(|e| StoreError::Io {
            context: "cannot encode the upload record".into(),
            source: io::Error::other(e),
        })?;
        // The sidecar first (atomically), then an empty data file: a crash
        // in between leaves a sidecar without data, which `recover` drops.
        write_atomic(&staging.join(SIDECAR), &json)?;
        let part = staging.join(PART);
        File::create(&part).map_err(io_err(format!("cannot create {STAGED}")))?;
        self.staged = Some(Staged { sidecar, sha256: target.sha256, file: None });
        Ok(0)
    }

    /// Appends `data` at `offset`, the staged length.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        let part = self.staging().join(PART);
        let staged = self.staged.as_mut().ok_or(StoreError::NoUpload)?;
        if offset.saturating_add(data.len() as u64) > staged.sidecar.size {
            return Err(StoreError::Io {
                context: "write beyond the announced size".into(),
                source: io::Error::other(format!("{} + {} > {}", offset, data.len(), staged.sidecar.size)),
            });
        }
        if staged.file.is_none() {
            let f = OpenOptions::new().write(true).open(&part).map_err(io_err(format!("cannot open {STAGED}")))?;
            staged.file = Some(f);
        }
        let Some(f) = staged.file.as_mut() else {
            return Err(StoreError::NoUpload);
        };
        let ctx = || format!("cannot write {STAGED}");
        // Drop anything past `offset` (a torn tail after a crash).
        let len = f.metadata().map_err(io_err(ctx()))?.len();
        if len != offset {
            f.set_len(offset).map_err(io_err(ctx()))?;
        }
        f.seek(SeekFrom::Start(offset)).map_err(io_err(ctx()))?;
        f.write_all(data).map_err(io_err(ctx()))
    }

    /// Reads staged bytes at `offset`; 0 at the end.
    pub fn read_staged(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, StoreError> {
        if self.staged.is_none() {
            return Err(StoreError::NoUpload);
        }
        let part = self.staging().join(PART);
        let ctx = || format!("cannot read {STAGED}");
        let mut f = File::open(&part).map_err(io_err(ctx()))?;
        f.seek(SeekFrom::Start(offset)).map_err(io_err(ctx()))?;
        let mut n = 0;
        while n < buf.len() {
            match f.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(ctx())(e)),
            }
        }
        Ok(n)
    }

    /// Publishes the staged artifact: fsync, rename, fsync the directory.
    /// The caller has verified the digest.
    pub fn commit(&mut self) -> Result<ArtifactInfo, StoreError> {
        let staged = self.staged.take().ok_or(StoreError::NoUpload)?;
        let staging = self.staging();
        let part = staging.join(PART);
        let result = (|| {
            let f = match staged.file {
                Some(f) => f,
                None => File::open(&part).map_err(io_err(format!("cannot open {STAGED}")))?,
            };
            f.sync_all().map_err(io_err(format!("cannot sync {STAGED}")))?;
            let size = f.metadata().map_err(io_err(format!("cannot stat {STAGED}")))?.len();
            drop(f);
            let kind = staged.sidecar.kind;
            let dest = self.path(kind, &staged.sidecar.name)?;
            fs::rename(&part, &dest)
                .map_err(io_err(format!("cannot publish {}", artifact(kind, &staged.sidecar.name))))?;
            sync_dir(&self.dir(kind));
            let _ = fs::remove_file(staging.join(SIDECAR));
            sync_dir(&staging);
            let modified = fs::metadata(&dest).ok().and_then(|m| m.modified().ok());
            self.digests.insert((kind, staged.sidecar.name.clone()), Cached { size, modified, sha256: staged.sha256 });
            Ok(ArtifactInfo { kind, name: staged.sidecar.name.clone(), size, sha256: staged.sha256 })
        })();
        if result.is_err() {
            let _ = self.discard();
        }
        result
    }

    /// Drops the staged upload and its record.
    pub fn discard(&mut self) -> Result<(), StoreError> {
        self.staged = None;
        let staging = self.staging();
        for f in [PART, SIDECAR] {
            let p = staging.join(f);
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(format!("cannot remove staging/{f}"))(e)),
            }
        }
        Ok(())
    }

    /// Published artifacts (of one kind, or all), with their digests.
    pub fn list(&mut self, kind: Option<ArtifactKind>) -> Result<Vec<ArtifactInfo>, StoreError> {
        let mut out = Vec::new();
        for k in [ArtifactKind::Model, ArtifactKind::EvalBundle] {
            if kind.is_some_and(|want| want != k) {
                continue;
            }
            let dir = self.dir(k);
            let entries = fs::read_dir(&dir).map_err(io_err(format!("cannot list the {}s", kind_label(k))))?;
            let mut names: Vec<String> = entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| is_valid_name(n))
                .collect();
            names.sort();
            for name in names {
                // Removed meanwhile: skip it.
                if let Ok(info) = self.info(k, &name) {
                    out.push(info);
                }
            }
        }
        Ok(out)
    }

    /// Size and digest of a published artifact (the digest is cached while
    /// the file's size and modification time are unchanged).
    pub fn info(&mut self, kind: ArtifactKind, name: &str) -> Result<ArtifactInfo, StoreError> {
        let path = self.existing(kind, name)?;
        let meta = fs::metadata(&path).map_err(io_err(format!("cannot stat {}", artifact(kind, name))))?;
        let (size, modified) = (meta.len(), meta.modified().ok());
        let key = (kind, name.to_string());
        if let Some(c) = self.digests.get(&key) {
            if c.size == size && c.modified == modified {
                return Ok(ArtifactInfo { kind, name: name.into(), size, sha256: c.sha256 });
            }
        }
        let sha256 = file_sha256(&path, &artifact(kind, name))?;
        self.digests.insert(key, Cached { size, modified, sha256 });
        Ok(ArtifactInfo { kind, name: name.into(), size, sha256 })
    }

    pub fn delete(&mut self, kind: ArtifactKind, name: &str) -> Result<(), StoreError> {
        let path = self.path(kind, name)?;
        match fs::remove_file(&path) {
            Ok(()) => {
                self.digests.remove(&(kind, name.to_string()));
                sync_dir(&self.dir(kind));
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(StoreError::NotFound { kind: kind_label(kind), name: name.to_string() })
            }
            Err(e) => Err(io_err(format!("cannot delete {}", artifact(kind, name)))(e)),
        }
    }

    /// Number of published artifacts.
    pub fn count(&self) -> u32 {
        [ArtifactKind::Model, ArtifactKind::EvalBundle]
            .iter()
            .filter_map(|k| fs::read_dir(self.dir(*k)).ok())
            .map(|d| d.flatten().filter(|e| e.file_name().to_str().is_some_and(is_valid_name)).count() as u32)
            .sum()
    }
}

/// SHA-256 of a file; errors name it `label` (an artifact, not a path).
pub fn file_sha256(path: &Path, label: &str) -> Result<Sha256Digest, StoreError> {
    let ctx = || format!("cannot read {label}");
    let mut f = File::open(path).map_err(io_err(ctx()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(ctx())(e)),
        }
    }
    Ok(h.finalize().into())
}

/// Writes a small file atomically: temp file, fsync, rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    let ctx = || "cannot write the upload record".to_string();
    let mut f = File::create(&tmp).map_err(io_err(ctx()))?;
    f.write_all(bytes).map_err(io_err(ctx()))?;
    f.sync_all().map_err(io_err(ctx()))?;
    fs::rename(&tmp, path).map_err(io_err(ctx()))
}

/// Makes a rename or a new entry durable (best effort: not every file
/// system supports it). Shared with `apps`.
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn begin(name: &str, data: &[u8]) -> UploadBegin {
        UploadBegin {
            kind: ArtifactKind::Model,
            name: name.into(),
            size: data.len() as u64,
            sha256: Sha256::digest(data).into(),
        }
    }

    #[test]
    fn upload_commit_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path(), 1 << 20).unwrap();
        let data = b"hello model bytes";
        let b = begin("m.onnx", data);
        assert_eq!(s.begin(&b).unwrap(), 0);
        s.write(0, &data[..5]).unwrap();
        s.write(5, &data[5..]).unwrap();
        // Not visible before the commit.
        assert!(s.list(None).unwrap().is_empty());
        assert!(!dir.path().join("models/m.onnx").exists());
        let mut buf = [0u8; 64];
        assert_eq!(s.read_staged(3, &mut buf).unwrap(), data.len() - 3);
        let info = s.commit().unwrap();
        assert_eq!(info.sha256, b.sha256);
        assert_eq!(fs::read(dir.path().join("models/m.onnx")).unwrap(), data);
        assert_eq!(s.list(Some(ArtifactKind::Model)).unwrap(), vec![info.clone()]);
        assert!(s.list(Some(ArtifactKind::EvalBundle)).unwrap().is_empty());
        // A fresh store computes the same digest from the file.
        let mut s2 = Store::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s2.list(None).unwrap(), vec![info]);
        assert_eq!(s2.count(), 1);
        s2.delete(ArtifactKind::Model, "m.onnx").unwrap();
        assert!(matches!(s2.delete(ArtifactKind::Model, "m.onnx"), Err(StoreError::NotFound { .. })));
        assert_eq!(s2.count(), 0);
    }

    #[test]
    fn resume_after_reopen_and_replace_other() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![7u8; 1000];
        let b = begin("big", &data);
        {
            let mut s = Store::open(dir.path(), 1 << 20).unwrap();
            assert_eq!(s.begin(&b).unwrap(), 0);
            s.write(0, &data[..600]).unwrap();
        }
        let mut s = Store::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.staged().unwrap().1, 600);
        assert_eq!(s.begin(&b).unwrap(), 600);
        // A different upload clears the staging.
        let other = begin("other", b"xyz");
        assert_eq!(s.begin(&other).unwrap(), 0);
        assert_eq!(s.begin(&b).unwrap(), 0);
        // A torn tail beyond the offset is cut.
        s.write(0, &data[..100]).unwrap();
        s.write(50, &data[50..]).unwrap();
        let info = s.commit().unwrap();
        assert_eq!(info.size, 1000);
    }

    #[test]
    fn stray_files_are_removed_and_inconsistent_staging_dropped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Store::open(dir.path(), 1 << 20).unwrap();
            s.begin(&begin("x", &[1u8; 10])).unwrap();
            s.write(0, &[1u8; 4]).unwrap();
        }
        fs::write(dir.path().join("staging/junk.tmp"), b"j").unwrap();
        // Data longer than announced: not resumable.
        fs::write(dir.path().join("staging/upload.part"), [1u8; 20]).unwrap();
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        assert!(s.staged().is_none());
        assert_eq!(fs::read_dir(dir.path().join("staging")).unwrap().count(), 0);
    }

    #[test]
    fn quota_and_names() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path(), 100).unwrap();
        let a = vec![1u8; 60];
        s.begin(&begin("a", &a)).unwrap();
        s.write(0, &a).unwrap();
        s.commit().unwrap();
        let b = vec![2u8; 50];
        match s.begin(&begin("b", &b)) {
            Err(StoreError::Quota { size: 50, available: 40, quota: 100 }) => {}
            other => panic!("{other:?}"),
        }
        // Replacing "a" frees its bytes.
        let a2 = vec![3u8; 90];
        assert_eq!(s.begin(&begin("a", &a2)).unwrap(), 0);
        s.write(0, &a2).unwrap();
        s.commit().unwrap();
        assert_eq!(s.used(), 90);
        for bad in ["../x", "a/b", ".hidden", ""] {
            assert!(matches!(s.begin(&begin(bad, b"1")), Err(StoreError::InvalidName(_))), "{bad}");
            assert!(matches!(s.path(ArtifactKind::Model, bad), Err(StoreError::InvalidName(_))));
        }
        assert!(matches!(s.existing(ArtifactKind::Model, "nope"), Err(StoreError::NotFound { .. })));
        let e: RemoteError = StoreError::Quota { size: 5, available: 4, quota: 9 }.into();
        assert_eq!(e, RemoteError::TooLarge { size: 5, max: 4 });
    }

    #[test]
    fn free_space_is_the_quota_left_or_the_disk_whichever_is_smaller() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 100).unwrap();
        assert_eq!(s.free(), 100, "a 100-byte quota on a disk with more room");
        let disk = s.disk_available().expect("statvfs works on the test's file system");
        assert!(disk > 0);
        let s = Store::open(dir.path(), u64::MAX).unwrap();
        assert_eq!(s.free(), s.disk_available().unwrap().min(u64::MAX - s.used()));
        assert!(s.free() < u64::MAX / 2, "the disk, not the quota: {}", s.free());
    }

    #[test]
    fn errors_sent_to_the_host_name_artifacts_not_paths() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path(), 1 << 20).unwrap();
        // A directory where a model should be: deleting it fails.
        fs::create_dir(dir.path().join("models/m")).unwrap();
        let e: RemoteError = s.delete(ArtifactKind::Model, "m").unwrap_err().into();
        let text = e.to_string();
        assert!(text.starts_with("storage error: cannot delete model 'm': "), "{text}");
        let root = dir.path().display().to_string();
        assert!(!text.contains(&root), "{text}");
        // Staging that cannot be written.
        s.begin(&begin("x", b"abc")).unwrap();
        fs::remove_dir_all(dir.path().join("staging")).unwrap();
        let e: RemoteError = s.write(0, b"abc").unwrap_err().into();
        let text = e.to_string();
        assert!(text.starts_with("storage error: cannot open the staged upload: "), "{text}");
        assert!(!text.contains(&root), "{text}");
    }
}
