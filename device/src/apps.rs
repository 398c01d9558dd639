//! Applications and their active models: what the camera's own program runs.
//!
//! ```text
//! <root>/apps/<app>/active.onnx   -> current/model.onnx   the active model (stable path)
//! <root>/apps/<app>/active.json   -> current/active.json  its metadata (stable path)
//! <root>/apps/<app>/current       -> gen-00000007         the one pointer that switches
//! <root>/apps/<app>/gen-00000007/ model.onnx, active.json (never modified once renamed in)
//! <root>/apps/<app>/gen-00000006/ an earlier generation (what a rollback restores)
//! <root>/apps/<app>/history.jsonl one JSON object per line, appended and fsync'd
//! <root>/apps/<app>/hook.log      output of the last activation hook run
//! <root>/apps/<app>/.tmp-*        a generation or pointer being made (removed at start-up)
//! ```
//!
//! A switch (activation or rollback) makes a complete new generation under
//! a temporary name (the model hard-linked from the store, or copied and
//! fsync'd where links do not work; `active.json` written and fsync'd; the
//! directory fsync'd), renames it to `gen-N`, and then replaces the
//! `current` symlink with one `rename(2)` of a fresh symlink over it,
//! followed by an fsync of the application's directory. The rename is
//! atomic, so after a crash or a power loss at any point `current` names
//! either the old generation or the new one, and both are complete: the
//! camera's program, which opens `active.onnx`, sees the old model or the
//! new one, never a mix. The model's bytes are never written in place
//! (uploads publish by rename too), so a hard link shares an inode no one
//! modifies.
//!
//! The history is appended after the switch. At start-up [`Apps::open`]
//! recovers every application: it removes temporary entries and
//! generations newer than `current` (made, never switched to), appends the
//! history entry of the current generation if the daemon stopped before
//! writing it (marked `recovered`), cuts a torn last history line, and
//! prunes generations no rollback can reach. Afterwards the history's last
//! activation or rollback names the current generation.

use std::collections::{BTreeSet, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rba_protocol::time::iso8601_utc;
use rba_protocol::{
    hex, is_valid_app_name, ActiveModel, AppStatus, GateCheck, GateFigures, HistoryEntry, HistoryEvent,
};
use serde::{Deserialize, Serialize};

use crate::store::{file_sha256, sync_dir, StoreError};

/// Generations kept per application: the current one and the ones a
/// rollback (and a rollback of that) can restore.
pub const KEEP_GENERATIONS: usize = 4;

/// Version of the `active.json` layout.
pub const ACTIVE_SCHEMA_VERSION: u32 = 1;

const CURRENT: &str = "current";
const ACTIVE_ONNX: &str = "active.onnx";
const ACTIVE_JSON: &str = "active.json";
const MODEL_FILE: &str = "model.onnx";
const HISTORY: &str = "history.jsonl";
pub const HOOK_LOG: &str = "hook.log";
const TMP_PREFIX: &str = ".tmp-";

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

/// `active.json`: what the camera's program reads next to `active.onnx`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActiveFile {
    pub schema_version: u32,
    pub app: String,
    pub generation: u64,
    pub model: String,
    /// Lower-case hex.
    pub sha256: String,
    pub size: u64,
    /// ISO 8601, UTC.
    pub activated_at: String,
    pub activated_at_ms: u64,
    pub event: HistoryEvent,
    pub previous_generation: Option<u64>,
    pub rolled_back_from: Option<u64>,
    pub bundle: Option<String>,
    pub gates: Vec<GateCheck>,
    pub figures: GateFigures,
}

impl ActiveFile {
    fn new(app: &str, m: &ActiveModel) -> ActiveFile {
        ActiveFile {
            schema_version: ACTIVE_SCHEMA_VERSION,
            app: app.into(),
            generation: m.generation,
            model: m.model.clone(),
            sha256: hex(&m.sha256),
            size: m.size,
            activated_at: iso8601_utc(m.activated_at_ms),
            activated_at_ms: m.activated_at_ms,
            event: m.event,
            previous_generation: m.previous_generation,
            rolled_back_from: m.rolled_back_from,
            bundle: m.bundle.clone(),
            gates: m.checks.clone(),
            figures: m.figures.clone(),
        }
    }

    fn to_model(&self) -> Option<ActiveModel> {
        Some(ActiveModel {
            generation: self.generation,
            model: self.model.clone(),
            sha256: rba_protocol::unhex32(&self.sha256)?,
            size: self.size,
            activated_at_ms: self.activated_at_ms,
            event: self.event,
            previous_generation: self.previous_generation,
            rolled_back_from: self.rolled_back_from,
            checks: self.gates.clone(),
            figures: self.figures.clone(),
            bundle: self.bundle.clone(),
        })
    }
}

fn gen_name(generation: u64) -> String {
    format!("gen-{generation:08}")
}

fn parse_gen(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("gen-")?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

/// The applications of a store: `<root>/apps`.
pub struct Apps {
    root: PathBuf,
}

impl Apps {
    /// Opens (creating) `<store>/apps` and recovers every application.
    pub fn open(store_root: &Path) -> Result<Apps, StoreError> {
        let root = store_root.join("apps");
        fs::create_dir_all(&root).map_err(io_err("cannot create the store's apps directory"))?;
        let apps = Apps { root };
        for app in apps.names()? {
            if let Err(e) = apps.recover(&app) {
                log::error!("application '{app}': recovery failed: {e}");
            }
        }
        Ok(apps)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<store>/apps/<app>` (the name is validated).
    pub fn dir(&self, app: &str) -> Result<PathBuf, StoreError> {
        if !is_valid_app_name(app) {
            return Err(StoreError::InvalidName(app.to_string()));
        }
        Ok(self.root.join(app))
    }

    /// The stable path of an application's active model.
    pub fn active_path(&self, app: &str) -> Result<PathBuf, StoreError> {
        Ok(self.dir(app)?.join(ACTIVE_ONNX))
    }

    /// Applications with a directory, sorted.
    pub fn names(&self) -> Result<Vec<String>, StoreError> {
        let entries = fs::read_dir(&self.root).map_err(io_err("cannot list the applications"))?;
        let mut names: Vec<String> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| is_valid_app_name(n))
            .collect();
        names.sort();
        Ok(names)
    }

    /// The generation `current` points to, if any.
    fn current_generation(&self, dir: &Path) -> Option<u64> {
        let target = fs::read_link(dir.join(CURRENT)).ok()?;
        parse_gen(target.to_str()?)
    }

    fn read_meta(&self, dir: &Path, generation: u64) -> Result<ActiveModel, StoreError> {
        let path = dir.join(gen_name(generation)).join(ACTIVE_JSON);
        let bytes = fs::read(&path).map_err(io_err(format!("cannot read the metadata of generation {generation}")))?;
        let file: ActiveFile = serde_json::from_slice(&bytes).map_err(|e| StoreError::Io {
            context: format!("the metadata of generation {generation} is damaged"),
            source: io::Error::other(e),
        })?;
        file.to_model().ok_or_else(|| StoreError::Io {
            context: format!("the metadata of generation {generation} is damaged"),
            source: io::Error::other("bad digest"),
        })
    }

    /// The active model of `app` (`None`: never activated).
    pub fn active(&self, app: &str) -> Result<Option<ActiveModel>, StoreError> {
        let dir = self.dir(app)?;
        match self.current_generation(&dir) {
            Some(g) => self.read_meta(&dir, g).map(Some),
            None => Ok(None),
        }
    }

    /// Generation numbers present on disk (complete, renamed in).
    fn generations(&self, dir: &Path) -> BTreeSet<u64> {
        fs::read_dir(dir)
            .map(|entries| entries.flatten().filter_map(|e| parse_gen(e.file_name().to_str()?)).collect())
            .unwrap_or_default()
    }

    /// The current generation and the ones before it a rollback can reach
    /// (following `previous_generation`), at most [`KEEP_GENERATIONS`].
    fn chain(&self, dir: &Path) -> Vec<ActiveModel> {
        let mut out: Vec<ActiveModel> = Vec::new();
        let mut next = self.current_generation(dir);
        while let Some(g) = next {
            if out.len() >= KEEP_GENERATIONS || out.iter().any(|m| m.generation == g) {
                break;
            }
            match self.read_meta(dir, g) {
                Ok(m) => {
                    next = m.previous_generation;
                    out.push(m);
                }
                Err(_) => break,
            }
        }
        out
    }

    /// What a rollback of `app` would restore.
    pub fn previous(&self, app: &str) -> Result<Option<ActiveModel>, StoreError> {
        let dir = self.dir(app)?;
        Ok(self.chain(&dir).into_iter().nth(1))
    }

    /// Makes `source` (a complete, durable file: a published model or a
    /// generation's model) the active model of `app`, with `meta` (its
    /// generation is assigned here). Crash-safe at every step (module docs).
    pub fn switch(&self, app: &str, source: &Path, mut meta: ActiveModel) -> Result<ActiveModel, StoreError> {
        let dir = self.dir(app)?;
        let fresh = !dir.exists();
        fs::create_dir_all(&dir).map_err(io_err(format!("cannot create application '{app}'")))?;
        if fresh {
            sync_dir(&self.root);
        }
        let current = self.current_generation(&dir);
        let history_max = read_history(&dir.join(HISTORY)).0.iter().filter_map(|e| e.generation).max();
        let generation =
            [current, self.generations(&dir).last().copied(), history_max].into_iter().flatten().max().unwrap_or(0) + 1;
        meta.generation = generation;
        // 1. The new generation, complete and durable, under a temporary name.
        let tmp = dir.join(format!("{TMP_PREFIX}{}", gen_name(generation)));
        let _ = fs::remove_dir_all(&tmp);
        let ctx = || format!("cannot prepare generation {generation} of '{app}'");
        fs::create_dir(&tmp).map_err(io_err(ctx()))?;
        let model = tmp.join(MODEL_FILE);
        if fs::hard_link(source, &model).is_err() {
            copy_durably(source, &model).map_err(io_err(ctx()))?;
        }
        let json = serde_json::to_vec_pretty(&ActiveFile::new(app, &meta))
            .map_err(|e| StoreError::Io { context: ctx(), source: io::Error::other(e) })?;
        write_durably(&tmp.join(ACTIVE_JSON), &json).map_err(io_err(ctx()))?;
        sync_dir(&tmp);
        // 2. Renamed in: complete, but not active until `current` names it.
        let gen_dir = dir.join(gen_name(generation));
        fs::rename(&tmp, &gen_dir).map_err(io_err(ctx()))?;
        sync_dir(&dir);
        self.ensure_stable_links(&dir)?;
        // 3. The switch: one rename of a fresh symlink over `current`.
        let link_tmp = dir.join(format!("{TMP_PREFIX}{CURRENT}"));
        let _ = fs::remove_file(&link_tmp);
        let sctx = || format!("cannot switch '{app}' to generation {generation}");
        std::os::unix::fs::symlink(gen_name(generation), &link_tmp).map_err(io_err(sctx()))?;
        fs::rename(&link_tmp, dir.join(CURRENT)).map_err(io_err(sctx()))?;
        sync_dir(&dir);
        Ok(meta)
    }

    /// `active.onnx` and `active.json`, symlinks through `current` (made
    /// once, atomically).
    fn ensure_stable_links(&self, dir: &Path) -> Result<(), StoreError> {
        let mut made = false;
        for (name, target) in
            [(ACTIVE_ONNX, format!("{CURRENT}/{MODEL_FILE}")), (ACTIVE_JSON, format!("{CURRENT}/{ACTIVE_JSON}"))]
        {
            let path = dir.join(name);
            if fs::read_link(&path).is_ok_and(|t| t == Path::new(&target)) {
                continue;
            }
            let tmp = dir.join(format!("{TMP_PREFIX}{name}"));
            let _ = fs::remove_file(&tmp);
            let ctx = || format!("cannot create {name}");
            std::os::unix::fs::symlink(&target, &tmp).map_err(io_err(ctx()))?;
            fs::rename(&tmp, &path).map_err(io_err(ctx()))?;
            made = true;
        }
        if made {
            sync_dir(dir);
        }
        Ok(())
    }

    /// Appends `entry` to the history of `app` (its `seq` is assigned
    /// here), fsync'd.
    pub fn record(&self, app: &str, mut entry: HistoryEntry) -> Result<HistoryEntry, StoreError> {
        let dir = self.dir(app)?;
        fs::create_dir_all(&dir).map_err(io_err(format!("cannot create application '{app}'")))?;
        let path = dir.join(HISTORY);
        let (entries, _) = read_history(&path);
        entry.seq = entries.last().map_or(0, |e| e.seq) + 1;
        let mut line = serde_json::to_vec(&entry).map_err(|e| StoreError::Io {
            context: "cannot encode a history entry".into(),
            source: io::Error::other(e),
        })?;
        line.push(b'\n');
        let ctx = || format!("cannot append to the history of '{app}'");
        let existed = path.exists();
        let mut f = OpenOptions::new().create(true).append(true).open(&path).map_err(io_err(ctx()))?;
        f.write_all(&line).map_err(io_err(ctx()))?;
        f.sync_data().map_err(io_err(ctx()))?;
        if !existed {
            sync_dir(&dir);
        }
        Ok(entry)
    }

    /// Removes the generations no rollback can reach (keeps the chain from
    /// `current`, at most [`KEEP_GENERATIONS`]).
    pub fn prune(&self, app: &str) -> Result<(), StoreError> {
        let dir = self.dir(app)?;
        let keep: HashSet<u64> = self.chain(&dir).iter().map(|m| m.generation).collect();
        if keep.is_empty() {
            // Nothing is active (or `current` cannot be read): remove nothing.
            return Ok(());
        }
        let mut removed = false;
        for g in self.generations(&dir) {
            if !keep.contains(&g) {
                fs::remove_dir_all(dir.join(gen_name(g)))
                    .map_err(io_err(format!("cannot remove generation {g} of '{app}'")))?;
                removed = true;
            }
        }
        if removed {
            sync_dir(&dir);
        }
        Ok(())
    }

    /// Start-up recovery of one application (module docs).
    pub fn recover(&self, app: &str) -> Result<(), StoreError> {
        let dir = self.dir(app)?;
        let mut changed = false;
        // Half-made generations and pointers.
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name();
                if name.to_str().is_some_and(|n| n.starts_with(TMP_PREFIX)) {
                    let p = e.path();
                    let _ = if p.is_dir() && !p.is_symlink() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
                    log::info!("application '{app}': removed {} (an unfinished switch)", name.to_string_lossy());
                    changed = true;
                }
            }
        }
        let current = self.current_generation(&dir);
        let usable =
            current.filter(|&g| self.read_meta(&dir, g).is_ok() && dir.join(gen_name(g)).join(MODEL_FILE).is_file());
        if current.is_some() && usable.is_none() {
            log::error!("application '{app}': `current` names a generation that cannot be read; no model is active");
        }
        // Generations made but never switched to (none is removed while
        // `current` names one that cannot be read: that needs a person).
        for g in self.generations(&dir) {
            let unswitched = match (current, usable) {
                (None, _) => true,
                (Some(c), Some(_)) => g > c,
                (Some(_), None) => false,
            };
            if unswitched {
                fs::remove_dir_all(dir.join(gen_name(g)))
                    .map_err(io_err(format!("cannot remove generation {g} of '{app}'")))?;
                log::info!("application '{app}': removed generation {g} (made, never switched to)");
                changed = true;
            }
        }
        if changed {
            sync_dir(&dir);
        }
        // The history: no torn line, and the current generation recorded.
        let path = dir.join(HISTORY);
        let (entries, good_len) = read_history(&path);
        if let Ok(meta) = fs::metadata(&path) {
            if meta.len() != good_len {
                let f = OpenOptions::new().write(true).open(&path).map_err(io_err("cannot repair the history"))?;
                f.set_len(good_len).map_err(io_err("cannot repair the history"))?;
                f.sync_all().map_err(io_err("cannot repair the history"))?;
                log::info!("application '{app}': cut a torn history line ({} bytes)", meta.len() - good_len);
            }
        }
        if let Some(g) = usable {
            let last = entries.iter().rev().find(|e| e.event != HistoryEvent::GateFailed);
            if last.and_then(|e| e.generation) != Some(g) {
                let m = self.read_meta(&dir, g)?;
                self.record(
                    app,
                    HistoryEntry {
                        seq: 0,
                        at_ms: m.activated_at_ms,
                        event: m.event,
                        generation: Some(g),
                        model: m.model.clone(),
                        sha256: m.sha256,
                        checks: m.checks.clone(),
                        figures: m.figures.clone(),
                        hook: None,
                        recovered: true,
                    },
                )?;
                log::info!("application '{app}': recorded generation {g} ('{}') in the history (recovered)", m.model);
            }
            self.ensure_stable_links(&dir)?;
            self.prune(app)?;
            // Complete, as the switch guarantees; a check that costs one read.
            let m = self.read_meta(&dir, g)?;
            let sha = file_sha256(&dir.join(gen_name(g)).join(MODEL_FILE), &format!("the active model of '{app}'"))?;
            if sha != m.sha256 {
                log::error!(
                    "application '{app}': the active model's SHA-256 is {}, its metadata says {}",
                    hex(&sha),
                    hex(&m.sha256)
                );
            } else {
                log::info!(
                    "application '{app}': active model '{}' (generation {g}, sha256 {})",
                    m.model,
                    &hex(&sha)[..16]
                );
            }
        }
        Ok(())
    }

    /// The status of `app`: its active model, what a rollback reaches, and
    /// the last `history` entries of its history.
    pub fn status(&self, app: &str, history: u32) -> Result<AppStatus, StoreError> {
        let dir = self.dir(app)?;
        if !dir.is_dir() {
            return Err(StoreError::NotFound { kind: "application", name: app.into() });
        }
        let mut chain = self.chain(&dir);
        let active = if chain.is_empty() { None } else { Some(chain.remove(0)) };
        let (entries, _) = read_history(&dir.join(HISTORY));
        let total = entries.len() as u64;
        let skip = entries.len().saturating_sub(history as usize);
        Ok(AppStatus {
            app: app.into(),
            active,
            previous: chain,
            history: entries.into_iter().skip(skip).collect(),
            history_total: total,
        })
    }

    /// The model file of a generation (to roll back to it).
    pub fn generation_model(&self, app: &str, generation: u64) -> Result<PathBuf, StoreError> {
        let p = self.dir(app)?.join(gen_name(generation)).join(MODEL_FILE);
        if p.is_file() {
            Ok(p)
        } else {
            Err(StoreError::NotFound { kind: "generation", name: format!("{app} generation {generation}") })
        }
    }

    /// Bytes held under `apps/`, counting each inode once and none that is
    /// in `seen` (the published models a generation may share by hard link).
    pub fn used(&self, seen: &mut HashSet<(u64, u64)>) -> u64 {
        let mut total = 0;
        let mut stack = vec![self.root.clone()];
        while let Some(d) = stack.pop() {
            let Ok(entries) = fs::read_dir(&d) else { continue };
            for e in entries.flatten() {
                let Ok(m) = fs::symlink_metadata(e.path()) else { continue };
                if m.is_dir() {
                    stack.push(e.path());
                } else if m.is_file() && seen.insert((m.dev(), m.ino())) {
                    total += m.len();
                }
            }
        }
        total
    }
}

/// The entries of a history file that parse, and the length of the file
/// up to the end of the last line that does (a torn or damaged tail after
/// it is what recovery cuts). A damaged line in the middle is skipped.
fn read_history(path: &Path) -> (Vec<HistoryEntry>, u64) {
    let mut bytes = Vec::new();
    if File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)).is_err() {
        return (Vec::new(), 0);
    }
    let mut entries = Vec::new();
    let mut good = 0u64;
    let mut start = 0usize;
    while let Some(nl) = bytes[start..].iter().position(|&b| b == b'\n') {
        let line = &bytes[start..start + nl];
        start += nl + 1;
        match serde_json::from_slice::<HistoryEntry>(line) {
            Ok(e) => {
                entries.push(e);
                good = start as u64;
            }
            Err(_) if line.iter().all(u8::is_ascii_whitespace) => good = start as u64,
            Err(_) => log::warn!("{}: skipping a damaged history line", path.display()),
        }
    }
    (entries, good)
}

/// Copies `from` to `to` and fsyncs it.
fn copy_durably(from: &Path, to: &Path) -> io::Result<()> {
    let mut src = File::open(from)?;
    let mut dst = File::create(to)?;
    src.seek(SeekFrom::Start(0))?;
    io::copy(&mut src, &mut dst)?;
    dst.sync_all()
}

fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rba_protocol::{parse_gates, GateFigures};
    use sha2::{Digest, Sha256};

    fn meta(model: &str, bytes: &[u8], previous: Option<u64>) -> ActiveModel {
        let figures = GateFigures { top1: Some(0.98), p99_ns: Some(3_000_000), ..GateFigures::default() };
        ActiveModel {
            generation: 0,
            model: model.into(),
            sha256: Sha256::digest(bytes).into(),
            size: bytes.len() as u64,
            activated_at_ms: 1_714_566_896_789,
            event: HistoryEvent::Activated,
            previous_generation: previous,
            rolled_back_from: None,
            checks: rba_protocol::gate::check_all(&parse_gates("top1>=97").unwrap(), &figures),
            figures,
            bundle: Some("eval-1".into()),
        }
    }

    fn entry(m: &ActiveModel) -> HistoryEntry {
        HistoryEntry {
            seq: 0,
            at_ms: m.activated_at_ms,
            event: m.event,
            generation: Some(m.generation),
            model: m.model.clone(),
            sha256: m.sha256,
            checks: m.checks.clone(),
            figures: m.figures.clone(),
            hook: None,
            recovered: false,
        }
    }

    /// Activates `bytes` (written to a source file) as the harness's daemon would.
    fn activate(apps: &Apps, src_dir: &Path, app: &str, name: &str, bytes: &[u8]) -> ActiveModel {
        let src = src_dir.join(name);
        fs::write(&src, bytes).unwrap();
        let previous = apps.active(app).unwrap().map(|m| m.generation);
        let m = apps.switch(app, &src, meta(name, bytes, previous)).unwrap();
        apps.record(app, entry(&m)).unwrap();
        apps.prune(app).unwrap();
        m
    }

    #[test]
    fn switch_keeps_the_stable_path_and_a_bounded_chain() {
        let d = tempfile::tempdir().unwrap();
        let apps = Apps::open(d.path()).unwrap();
        assert_eq!(apps.active("inspect").unwrap(), None);
        let src = tempfile::tempdir().unwrap();
        for i in 1..=6u8 {
            let m = activate(&apps, src.path(), "inspect", &format!("m{i}"), &[i; 100]);
            assert_eq!(m.generation, u64::from(i));
            assert_eq!(fs::read(apps.active_path("inspect").unwrap()).unwrap(), [i; 100]);
        }
        let dir = d.path().join("apps/inspect");
        let json: ActiveFile = serde_json::from_slice(&fs::read(dir.join("active.json")).unwrap()).unwrap();
        assert_eq!((json.generation, json.model.as_str(), json.schema_version), (6, "m6", 1));
        assert_eq!(json.activated_at, "2024-05-01T12:34:56.789Z");
        assert_eq!(json.sha256, hex(&Sha256::digest([6u8; 100])));
        // The current generation and three before it.
        let gens: Vec<u64> = apps.generations(&dir).into_iter().collect();
        assert_eq!(gens, [3, 4, 5, 6]);
        let s = apps.status("inspect", 2).unwrap();
        assert_eq!(s.active.as_ref().unwrap().generation, 6);
        assert_eq!(s.previous.iter().map(|m| m.generation).collect::<Vec<_>>(), [5, 4, 3]);
        assert_eq!((s.history.len(), s.history_total), (2, 6));
        assert_eq!(s.history[1].seq, 6);
        // A hard link: no second copy of the bytes.
        let a = fs::metadata(dir.join("gen-00000006/model.onnx")).unwrap();
        let b = fs::metadata(src.path().join("m6")).unwrap();
        assert_eq!(a.ino(), b.ino());
        let mut seen = HashSet::new();
        seen.insert((b.dev(), b.ino()));
        assert!(apps.used(&mut seen) < 4 * 100 + 20_000, "linked models counted once");
        assert!(matches!(apps.dir("../x"), Err(StoreError::InvalidName(_))));
        assert!(matches!(apps.status("nope", 1), Err(StoreError::NotFound { .. })));
    }

    #[test]
    fn recovery_removes_unfinished_switches_and_completes_the_history() {
        let d = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        let dir = d.path().join("apps/inspect");
        {
            let apps = Apps::open(d.path()).unwrap();
            activate(&apps, src.path(), "inspect", "a", b"aaaa");
            // A switch that stopped after renaming generation 2 in, before
            // the pointer: and a half-made generation 3 and pointer.
            let srcb = src.path().join("b");
            fs::write(&srcb, b"bbbb").unwrap();
            apps.switch("inspect", &srcb, meta("b", b"bbbb", Some(1))).unwrap();
            std::os::unix::fs::symlink("gen-00000001", dir.join(".tmp-current")).unwrap();
            fs::rename(dir.join(".tmp-current"), dir.join("current")).unwrap();
            fs::create_dir(dir.join(".tmp-gen-00000003")).unwrap();
            fs::write(dir.join(".tmp-gen-00000003/model.onnx"), b"half").unwrap();
            std::os::unix::fs::symlink("gen-00000003", dir.join(".tmp-current")).unwrap();
        }
        let apps = Apps::open(d.path()).unwrap();
        let names: BTreeSet<String> =
            fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(
            names,
            ["active.json", "active.onnx", "current", "gen-00000001", "history.jsonl"].map(String::from).into()
        );
        assert_eq!(fs::read(dir.join("active.onnx")).unwrap(), b"aaaa");

        // Switched, but stopped before the history entry; and a torn line.
        let srcc = src.path().join("c");
        fs::write(&srcc, b"cccc").unwrap();
        apps.switch("inspect", &srcc, meta("c", b"cccc", Some(1))).unwrap();
        let mut f = OpenOptions::new().append(true).open(dir.join(HISTORY)).unwrap();
        f.write_all(b"{\"seq\":2,\"at_ms\":1").unwrap();
        drop(f);
        let apps = Apps::open(d.path()).unwrap();
        let s = apps.status("inspect", 10).unwrap();
        assert_eq!(s.active.as_ref().unwrap().model, "c");
        let last = s.history.last().unwrap();
        assert_eq!((last.generation, last.recovered, last.seq), (Some(2), true, 2));
        assert_eq!(s.history_total, 2);
        let text = fs::read_to_string(dir.join(HISTORY)).unwrap();
        assert!(text.ends_with('\n') && text.lines().count() == 2, "{text}");
        // Reopening changes nothing more.
        let apps = Apps::open(d.path()).unwrap();
        assert_eq!(apps.status("inspect", 10).unwrap().history_total, 2);
    }

    #[test]
    fn history_and_metadata_are_readable_json() {
        let m = meta("a", b"x", None);
        let e = HistoryEntry { seq: 3, ..entry(&m) };
        let line = serde_json::to_string(&e).unwrap();
        assert!(line.contains(&format!("\"sha256\":\"{}\"", hex(&m.sha256))), "{line}");
        assert!(line.contains("\"event\":\"activated\""), "{line}");
        assert!(line.contains("\"op\":\">=\"") && line.contains("\"unit\":\"%\""), "{line}");
        assert_eq!(serde_json::from_str::<HistoryEntry>(&line).unwrap(), e);
        // And the same types on the wire.
        let wire = postcard::to_stdvec(&e).unwrap();
        assert_eq!(postcard::from_bytes::<HistoryEntry>(&wire).unwrap(), e);
    }
}
