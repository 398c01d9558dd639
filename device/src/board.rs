//! Board profiles: `boards/<name>.toml`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardProfile {
    /// Profile name, e.g. `raspberry-pi-5` (reported to the host).
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Rust target triple the daemon is built for.
    pub target: String,
    /// CPU model, e.g. `cortex-a76`.
    pub cpu: String,
    pub cores: u32,
    /// Default inference threads when a request does not say.
    pub threads: u32,
    /// Where the daemon keeps its artifacts.
    pub model_dir: PathBuf,
    /// Bytes the store may hold (published plus staged).
    #[serde(default)]
    pub quota_bytes: Option<u64>,
    pub link: LinkProfile,
    #[serde(default)]
    pub sensors: SensorProfile,
    #[serde(default)]
    pub notes: String,
}

/// The link `rba-device serve` uses when the command line names none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkProfile {
    /// `serial` or `tcp`.
    pub default: LinkKind,
    #[serde(default)]
    pub serial: Option<PathBuf>,
    #[serde(default)]
    pub baud: Option<u32>,
    /// `ADDR:PORT` to listen on.
    #[serde(default)]
    pub tcp: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    #[default]
    Serial,
    Tcp,
}

/// Where the board exposes sensors, when the defaults do not fit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorProfile {
    /// A temperature file in millidegrees Celsius.
    #[serde(default)]
    pub thermal_zone: Option<PathBuf>,
    /// A Raspberry Pi style throttle flags file.
    #[serde(default)]
    pub throttle: Option<PathBuf>,
    /// Ask `vcgencmd get_throttled` when no throttle file exists.
    #[serde(default)]
    pub vcgencmd: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    #[error("board profile '{name}' not found (looked for {looked})")]
    NotFound { name: String, looked: String },
    #[error("cannot read board profile {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("invalid board profile {path}: {reason}")]
    Invalid { path: String, reason: String },
}

impl BoardProfile {
    pub fn parse(text: &str, path: &Path) -> Result<BoardProfile, BoardError> {
        let p: BoardProfile = toml::from_str(text)
            .map_err(|e| BoardError::Invalid { path: path.display().to_string(), reason: e.to_string() })?;
        let invalid = |reason: &str| BoardError::Invalid { path: path.display().to_string(), reason: reason.into() };
        if p.cores == 0 || p.threads == 0 {
            return Err(invalid("cores and threads must be at least 1"));
        }
        match p.link.default {
            LinkKind::Serial if p.link.serial.is_none() => {
                return Err(invalid("default link is serial but no serial path is set"))
            }
            LinkKind::Tcp if p.link.tcp.is_none() => {
                return Err(invalid("default link is tcp but no tcp address is set"))
            }
            _ => {}
        }
        Ok(p)
    }

    pub fn load_file(path: &Path) -> Result<BoardProfile, BoardError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| BoardError::Read { path: path.display().to_string(), reason: e.to_string() })?;
        BoardProfile::parse(&text, path)
    }

    /// `name` is a path to a `.toml` file, or a profile name looked up as
    /// `<dir>/<name>.toml` in each of `dirs`, in order.
    pub fn find(name: &str, dirs: &[PathBuf]) -> Result<BoardProfile, BoardError> {
        let as_path = Path::new(name);
        if name.ends_with(".toml") || name.contains('/') {
            if as_path.is_file() {
                return BoardProfile::load_file(as_path);
            }
            return Err(BoardError::NotFound { name: name.into(), looked: as_path.display().to_string() });
        }
        let candidates: Vec<PathBuf> = dirs.iter().map(|d| d.join(format!("{name}.toml"))).collect();
        for c in &candidates {
            if c.is_file() {
                return BoardProfile::load_file(c);
            }
        }
        let looked = candidates.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(", ");
        Err(BoardError::NotFound { name: name.into(), looked })
    }
}

/// Where `--board NAME` is looked up: `$RBA_BOARDS_DIR`, `./boards`,
/// `<exe dir>/boards`, `<exe dir>/../share/rba/boards`, `/etc/rba/boards`.
pub fn default_board_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("RBA_BOARDS_DIR") {
        dirs.push(PathBuf::from(d));
    }
    dirs.push(PathBuf::from("boards"));
    if let Some(exe_dir) = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)) {
        dirs.push(exe_dir.join("boards"));
        dirs.push(exe_dir.join("../share/rba/boards"));
    }
    dirs.push(PathBuf::from("/etc/rba/boards"));
    dirs
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn repo_boards() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../boards")
    }

    #[test]
    fn every_shipped_profile_parses() {
        let mut names = Vec::new();
        for e in std::fs::read_dir(repo_boards()).unwrap().flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "toml") {
                let b = BoardProfile::load_file(&p).unwrap();
                assert_eq!(Some(b.name.as_str()), p.file_stem().and_then(|s| s.to_str()), "{}", p.display());
                assert!(b.threads <= b.cores, "{}", p.display());
                names.push(b.name);
            }
        }
        names.sort();
        assert_eq!(names, ["jetson-orin-nano", "local", "qemu-aarch64", "raspberry-pi-4", "raspberry-pi-5"]);
        let pi5 = BoardProfile::find("raspberry-pi-5", &[repo_boards()]).unwrap();
        assert_eq!((pi5.target.as_str(), pi5.cores), ("aarch64-unknown-linux-gnu", 4));
    }

    #[test]
    fn missing_and_invalid_profiles() {
        let e = BoardProfile::find("no-such-board", &[repo_boards()]).unwrap_err();
        assert!(matches!(e, BoardError::NotFound { .. }));
        assert!(e.to_string().contains("no-such-board.toml"), "{e}");
        let e = BoardProfile::parse("name = 'x'", Path::new("x.toml")).unwrap_err();
        assert!(matches!(e, BoardError::Invalid { .. }), "{e}");
        let text = "name='x'\ntarget='t'\ncpu='c'\ncores=2\nthreads=2\nmodel_dir='/tmp/x'\n[link]\ndefault='tcp'\n";
        let e = BoardProfile::parse(text, Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("no tcp address"), "{e}");
        let ok = BoardProfile::parse(&format!("{text}tcp='0.0.0.0:7878'\n"), Path::new("x.toml")).unwrap();
        assert_eq!(ok.link.default, LinkKind::Tcp);
    }
}
