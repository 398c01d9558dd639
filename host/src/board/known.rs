//! Known boards: the device identities the host pinned on first use.
//!
//! One line per target, `<target> <fingerprint>` (`host:port` for TCP, the
//! port path for serial; the fingerprint is `SHA256:...` of the static key
//! the Noise handshake proved, never anything the device said about
//! itself). Blank lines and lines starting with `#` are kept as they are.
//! The file is `$RBA_KNOWN_BOARDS`, else `$XDG_CONFIG_HOME/rba/known_boards`,
//! else `~/.config/rba/known_boards`, and is rewritten atomically (a
//! temporary file renamed over it), mode 0600.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Environment variable naming the known-boards file.
pub const KNOWN_BOARDS_ENV: &str = "RBA_KNOWN_BOARDS";

#[derive(Debug, thiserror::Error)]
pub enum KnownError {
    #[error("cannot read the known-boards file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("cannot write the known-boards file {path}: {reason}")]
    Write { path: String, reason: String },
    #[error("{path}:{line}: expected `TARGET SHA256:...`, got {text:?}")]
    Syntax { path: String, line: usize, text: String },
}

/// Where the known-boards file is (`None`: no environment to place it).
pub fn default_path() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(p) = var(KNOWN_BOARDS_ENV) {
        return Some(p);
    }
    if let Some(x) = var("XDG_CONFIG_HOME") {
        return Some(x.join("rba").join("known_boards"));
    }
    var("HOME").map(|h| h.join(".config").join("rba").join("known_boards"))
}

/// A pinned identity: where it is written and what it says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    pub fingerprint: String,
    /// 1-based line in the file.
    pub line: usize,
}

/// What the known-boards file says about one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// Not pinned yet.
    New,
    /// The pinned identity.
    Matches,
    /// Pinned to another identity.
    Changed(Pin),
}

/// The known-boards file, read in full.
#[derive(Clone, Debug)]
pub struct KnownBoards {
    path: PathBuf,
    lines: Vec<String>,
}

impl KnownBoards {
    /// Reads `path` (a missing file is an empty list).
    pub fn load(path: &Path) -> Result<KnownBoards, KnownError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(KnownError::Read { path: path.display().to_string(), reason: e.to_string() }),
        };
        let kb = KnownBoards { path: path.to_path_buf(), lines: text.lines().map(str::to_string).collect() };
        for (i, l) in kb.lines.iter().enumerate() {
            if parse(l).is_none() && !is_blank(l) {
                return Err(KnownError::Syntax { path: path.display().to_string(), line: i + 1, text: l.clone() });
            }
        }
        Ok(kb)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pin of `target`, if any.
    pub fn get(&self, target: &str) -> Option<Pin> {
        self.lines.iter().enumerate().find_map(|(i, l)| match parse(l) {
            Some((t, f)) if t == target => Some(Pin { fingerprint: f.to_string(), line: i + 1 }),
            _ => None,
        })
    }

    /// How `fingerprint` compares with the pin of `target`.
    pub fn check(&self, target: &str, fingerprint: &str) -> Check {
        match self.get(target) {
            None => Check::New,
            Some(p) if p.fingerprint == fingerprint => Check::Matches,
            Some(p) => Check::Changed(p),
        }
    }

    /// Pins `target` to `fingerprint` (appended; never replaces a pin:
    /// [`KnownBoards::forget`] first) and writes the file.
    pub fn pin(&mut self, target: &str, fingerprint: &str) -> Result<(), KnownError> {
        if self.get(target).is_none() {
            self.lines.push(format!("{target} {fingerprint}"));
            self.save()?;
        }
        Ok(())
    }

    /// Removes the pin of `target`; returns it if there was one.
    pub fn forget(&mut self, target: &str) -> Result<Option<Pin>, KnownError> {
        let Some(pin) = self.get(target) else { return Ok(None) };
        self.lines.retain(|l| parse(l).is_none_or(|(t, _)| t != target));
        self.save()?;
        Ok(Some(pin))
    }

    /// Writes a temporary file next to the target, mode 0600, then renames
    /// it over the file: readers see the old or the new list, never half.
    fn save(&self) -> Result<(), KnownError> {
        let err =
            |e: std::io::Error| KnownError::Write { path: self.path.display().to_string(), reason: e.to_string() };
        let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(err)?;
        let mut tmp = tempfile::Builder::new().prefix(".known_boards.").tempfile_in(dir).map_err(err)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        }
        let mut text = self.lines.join("\n");
        text.push('\n');
        tmp.write_all(text.as_bytes()).map_err(err)?;
        tmp.as_file().sync_all().map_err(err)?;
        tmp.persist(&self.path).map_err(|e| err(e.error))?;
        Ok(())
    }
}

/// Serialises pinning on first use within this process (the boards of a
/// fleet connect in parallel; each pin rewrites the whole file).
static PIN_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Reads the file at `path` again and pins `target` to `fingerprint` if it
/// has no pin yet, under a process-wide lock, so that boards pinned in
/// parallel all end up in the file. Returns what the file said before.
pub fn pin_if_new(path: &Path, target: &str, fingerprint: &str) -> Result<Check, KnownError> {
    let _guard = PIN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut kb = KnownBoards::load(path)?;
    let check = kb.check(target, fingerprint);
    if check == Check::New {
        kb.pin(target, fingerprint)?;
    }
    Ok(check)
}

fn is_blank(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

fn parse(line: &str) -> Option<(&str, &str)> {
    if is_blank(line) {
        return None;
    }
    let mut parts = line.split_whitespace();
    let (target, fp) = (parts.next()?, parts.next()?);
    (parts.next().is_none() && fp.starts_with("SHA256:")).then_some((target, fp))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const A: &str = "SHA256:Zmh6rfhivXdsj8GLjp+OIAiXFIVu4jOzkCpZHQ1fKSU";
    const B: &str = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU";

    #[test]
    fn pin_check_forget_and_keep_comments() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("cfg/rba/known_boards");
        let mut kb = KnownBoards::load(&path).unwrap();
        assert_eq!(kb.check("10.0.0.5:7878", A), Check::New);
        kb.pin("10.0.0.5:7878", A).unwrap();
        kb.pin("/dev/ttyACM0", B).unwrap();
        let kb = KnownBoards::load(&path).unwrap();
        assert_eq!(kb.check("10.0.0.5:7878", A), Check::Matches);
        assert_eq!(kb.check("/dev/ttyACM0", A), Check::Changed(Pin { fingerprint: B.into(), line: 2 }));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("10.0.0.5:7878 {A}\n/dev/ttyACM0 {B}\n"));
        // A pin is never replaced silently.
        let mut kb = kb;
        kb.pin("/dev/ttyACM0", A).unwrap();
        assert_eq!(kb.get("/dev/ttyACM0").unwrap().fingerprint, B);
        // Comments survive a rewrite; forget removes exactly one target.
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.insert_str(0, "# boards of line 3\n\n");
        std::fs::write(&path, text).unwrap();
        let mut kb = KnownBoards::load(&path).unwrap();
        assert_eq!(kb.get("/dev/ttyACM0").unwrap().line, 4);
        assert_eq!(kb.forget("/dev/ttyACM0").unwrap().unwrap().fingerprint, B);
        assert_eq!(kb.forget("/dev/ttyACM0").unwrap(), None);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("# boards of line 3\n\n10.0.0.5:7878 {A}\n"));
    }

    #[test]
    fn writes_are_atomic_and_private() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("known_boards");
        let mut kb = KnownBoards::load(&path).unwrap();
        for i in 0..20 {
            kb.pin(&format!("host{i}:7878"), A).unwrap();
        }
        // Only the file itself: every temporary file was renamed into place.
        let names: Vec<String> =
            std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        assert_eq!(names, ["known_boards"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert_eq!(KnownBoards::load(&path).unwrap().get("host19:7878").unwrap().line, 20);
    }

    #[test]
    fn pins_made_in_parallel_all_land_in_the_file() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("known_boards");
        std::thread::scope(|s| {
            for i in 0..16 {
                let path = &path;
                s.spawn(move || assert_eq!(pin_if_new(path, &format!("10.0.0.{i}:7878"), A).unwrap(), Check::New));
            }
        });
        let kb = KnownBoards::load(&path).unwrap();
        for i in 0..16 {
            assert_eq!(kb.check(&format!("10.0.0.{i}:7878"), A), Check::Matches);
        }
        assert!(matches!(pin_if_new(&path, "10.0.0.3:7878", B).unwrap(), Check::Changed(_)));
    }

    #[test]
    fn a_damaged_file_is_reported_with_its_line() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("known_boards");
        std::fs::write(&path, format!("a:1 {A}\nb:2 not-a-fingerprint\n")).unwrap();
        let e = KnownBoards::load(&path).unwrap_err().to_string();
        assert!(e.contains(":2:") && e.contains("not-a-fingerprint"), "{e}");
    }
}
