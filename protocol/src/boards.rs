//! Board profiles (`boards/<name>.toml`): what a board is (target, CPU,
//! cores), where its daemon keeps models, which link it serves and where
//! its sensors are. The daemon reads them to configure itself; the host to
//! know how to reach a board.
//!
//! The repository's profiles are compiled in ([`EMBEDDED`]), so an installed
//! binary knows its boards; a file of the same name in one of the lookup
//! directories ([`lookup_dirs`]) overrides the compiled-in one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::message::{EpPolicy, ExecutionProvider};

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
    /// Bytes the tensors of one job's model may take (the daemon refuses a
    /// model that declares more, and limits its worker to this plus a
    /// margin); unset: half the memory available when the job starts.
    #[serde(default)]
    pub memory_budget_bytes: Option<u64>,
    /// Run after the active model of an application changed (activation or
    /// rollback), without a shell: program and arguments, e.g.
    /// `["systemctl", "reload", "inspection.service"]`. It gets `RBA_APP`,
    /// `RBA_MODEL`, `RBA_SHA256`, `RBA_GENERATION`, `RBA_EVENT` and
    /// `RBA_ACTIVE_MODEL` (the stable path of the active model) in its
    /// environment; its exit status is logged and reported to the host.
    #[serde(default)]
    pub activate_hook: Option<Vec<String>>,
    /// Seconds the hook may run before it is killed (default 30).
    #[serde(default)]
    pub activate_hook_timeout_s: Option<u64>,
    pub link: LinkProfile,
    #[serde(default)]
    pub sensors: SensorProfile,
    /// ONNX Runtime: its library and the execution providers a job gets
    /// when its request names none.
    #[serde(default)]
    pub onnxruntime: OnnxRuntimeProfile,
    #[serde(default)]
    pub notes: String,
}

/// `[onnxruntime]`: where the board's ONNX Runtime library is, and what a
/// job that asks for onnxruntime without naming providers gets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OnnxRuntimeProfile {
    /// The library (`libonnxruntime.so.1.20.0`, or a folder holding one);
    /// unset: searched (see `rba-device serve --help`).
    #[serde(default)]
    pub library: Option<PathBuf>,
    /// In order of preference; providers the library lacks are skipped (and
    /// said so). Empty: ONNX Runtime's CPU kernels.
    #[serde(default)]
    pub execution_providers: Vec<ExecutionProvider>,
    /// When a request names no policy.
    #[serde(default)]
    pub policy: EpPolicy,
    #[serde(default)]
    pub tensorrt: TensorRtProfile,
}

/// `[onnxruntime.tensorrt]`: how the TensorRT provider builds its engines.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TensorRtProfile {
    /// Let TensorRT pick fp16 kernels where faster (`trt_fp16_enable`).
    #[serde(default)]
    pub fp16: bool,
    /// Keep built engines in the store and reuse them (`trt_engine_cache_enable`).
    #[serde(default = "yes")]
    pub engine_cache: bool,
    /// Keep TensorRT's kernel timings in the store (`trt_timing_cache_enable`).
    #[serde(default = "yes")]
    pub timing_cache: bool,
    /// Scratch memory TensorRT may use while building (`trt_max_workspace_size`).
    #[serde(default)]
    pub max_workspace_bytes: Option<u64>,
    /// 0-5, TensorRT's default 3 (`trt_builder_optimization_level`).
    #[serde(default)]
    pub builder_optimization_level: Option<u8>,
}

fn yes() -> bool {
    true
}

impl Default for TensorRtProfile {
    fn default() -> Self {
        TensorRtProfile {
            fp16: false,
            engine_cache: true,
            timing_cache: true,
            max_workspace_bytes: None,
            builder_optimization_level: None,
        }
    }
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
    /// Ask `nvpmodel -q` for the power mode (Jetson) before reading
    /// `/etc/nvpmodel.conf` and its status file.
    #[serde(default)]
    pub nvpmodel: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error("board profile '{name}' not found (looked for {looked})")]
    NotFound { name: String, looked: String },
    #[error("cannot read board profile {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("invalid board profile {path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// The repository's `boards/*.toml`, compiled in: (name, TOML text).
pub const EMBEDDED: &[(&str, &str)] = &[
    ("jetson-orin-nano", include_str!("../../boards/jetson-orin-nano.toml")),
    ("loopback", include_str!("../../boards/loopback.toml")),
    ("qemu-aarch64", include_str!("../../boards/qemu-aarch64.toml")),
    ("raspberry-pi-4", include_str!("../../boards/raspberry-pi-4.toml")),
    ("raspberry-pi-5", include_str!("../../boards/raspberry-pi-5.toml")),
];

impl BoardProfile {
    /// Parses and checks a profile; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<BoardProfile, ProfileError> {
        let p: BoardProfile = toml::from_str(text)
            .map_err(|e| ProfileError::Invalid { path: origin.display().to_string(), reason: e.to_string() })?;
        let invalid =
            |reason: &str| ProfileError::Invalid { path: origin.display().to_string(), reason: reason.into() };
        if p.cores == 0 || p.threads == 0 {
            return Err(invalid("cores and threads must be at least 1"));
        }
        if p.memory_budget_bytes == Some(0) {
            return Err(invalid("memory_budget_bytes must be at least 1"));
        }
        let eps = &p.onnxruntime.execution_providers;
        if eps.iter().enumerate().any(|(i, ep)| eps[..i].contains(ep)) {
            return Err(invalid("onnxruntime.execution_providers names a provider twice"));
        }
        if p.onnxruntime.tensorrt.builder_optimization_level.is_some_and(|l| l > 5) {
            return Err(invalid("onnxruntime.tensorrt.builder_optimization_level is 0 to 5"));
        }
        if p.activate_hook.as_ref().is_some_and(|h| h.first().is_none_or(|prog| prog.is_empty())) {
            return Err(invalid("activate_hook needs a program: [\"program\", \"arg\", ...]"));
        }
        if p.activate_hook_timeout_s == Some(0) {
            return Err(invalid("activate_hook_timeout_s must be at least 1"));
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

    pub fn load_file(path: &Path) -> Result<BoardProfile, ProfileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ProfileError::Read { path: path.display().to_string(), reason: e.to_string() })?;
        BoardProfile::parse(&text, path)
    }
}

/// The compiled-in profile `name`, if there is one.
fn embedded(name: &str) -> Option<Result<BoardProfile, ProfileError>> {
    EMBEDDED
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(n, text)| BoardProfile::parse(text, &Path::new("<built-in>").join(format!("{n}.toml"))))
}

/// `name` is a path to a `.toml` file, or a profile name looked up as
/// `<dir>/<name>.toml` in each of `dirs`, in order, and then among the
/// compiled-in profiles.
pub fn find(name: &str, dirs: &[PathBuf]) -> Result<BoardProfile, ProfileError> {
    let as_path = Path::new(name);
    if name.ends_with(".toml") || name.contains('/') {
        if as_path.is_file() {
            return BoardProfile::load_file(as_path);
        }
        return Err(ProfileError::NotFound { name: name.into(), looked: as_path.display().to_string() });
    }
    let candidates: Vec<PathBuf> = dirs.iter().map(|d| d.join(format!("{name}.toml"))).collect();
    for c in &candidates {
        if c.is_file() {
            return BoardProfile::load_file(c);
        }
    }
    if let Some(p) = embedded(name) {
        return p;
    }
    let looked = candidates.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(", ");
    Err(ProfileError::NotFound { name: name.into(), looked })
}

/// Every profile known: the valid `*.toml` files of `dirs` (the first one
/// of a name wins), then the compiled-in ones not overridden; sorted by name.
pub fn known(dirs: &[PathBuf]) -> Vec<BoardProfile> {
    let mut seen = BTreeMap::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths.into_iter().filter(|p| p.extension().is_some_and(|x| x == "toml")) {
            if let Ok(profile) = BoardProfile::load_file(&p) {
                seen.entry(profile.name.clone()).or_insert(profile);
            }
        }
    }
    for (name, _) in EMBEDDED {
        if let Some(Ok(profile)) = embedded(name) {
            seen.entry(profile.name.clone()).or_insert(profile);
        }
    }
    seen.into_values().collect()
}

/// Where `--board NAME` is looked up: `extra` (a `--boards-dir`) first, then
/// `$RBA_BOARDS_DIR`, `./boards`, `<exe dir>/boards`,
/// `<exe dir>/../share/rba/boards`, `/etc/rba/boards`.
pub fn lookup_dirs(extra: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = extra.map(Path::to_path_buf).into_iter().collect();
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
        assert_eq!(names, ["jetson-orin-nano", "loopback", "qemu-aarch64", "raspberry-pi-4", "raspberry-pi-5"]);
        let pi5 = find("raspberry-pi-5", &[repo_boards()]).unwrap();
        assert_eq!((pi5.target.as_str(), pi5.cores), ("aarch64-unknown-linux-gnu", 4));
        // Every shipped profile is compiled in, under its own name.
        let embedded: Vec<&str> = EMBEDDED.iter().map(|(n, _)| *n).collect();
        assert_eq!(embedded, names);
        for (name, _) in EMBEDDED {
            assert_eq!(embedded_profile(name).name, *name);
        }
    }

    fn embedded_profile(name: &str) -> BoardProfile {
        embedded(name).unwrap().unwrap()
    }

    #[test]
    fn missing_and_invalid_profiles() {
        let e = find("no-such-board", &[repo_boards()]).unwrap_err();
        assert!(matches!(e, ProfileError::NotFound { .. }));
        assert!(e.to_string().contains("no-such-board.toml"), "{e}");
        let e = BoardProfile::parse("name = 'x'", Path::new("x.toml")).unwrap_err();
        assert!(matches!(e, ProfileError::Invalid { .. }), "{e}");
        let text = "name='x'\ntarget='t'\ncpu='c'\ncores=2\nthreads=2\nmodel_dir='/tmp/x'\n[link]\ndefault='tcp'\n";
        let e = BoardProfile::parse(text, Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("no tcp address"), "{e}");
        let ok = BoardProfile::parse(&format!("{text}tcp='0.0.0.0:7878'\n"), Path::new("x.toml")).unwrap();
        assert_eq!(ok.link.default, LinkKind::Tcp);
        let e = BoardProfile::parse(&format!("{text}tcp='0.0.0.0:7878'\ntypo=1\n"), Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("typo"), "unknown keys are errors: {e}");
        // The memory budget is optional, top-level, and a misspelling of it
        // is an error like any unknown key.
        assert_eq!(ok.memory_budget_bytes, None);
        let top = text.replace("[link]", "memory_budget_bytes = 1_073_741_824\n[link]");
        let b = BoardProfile::parse(&format!("{top}tcp='0.0.0.0:7878'\n"), Path::new("x.toml")).unwrap();
        assert_eq!(b.memory_budget_bytes, Some(1 << 30));
        let typo = text.replace("[link]", "memory_budget = 1\n[link]");
        let e = BoardProfile::parse(&format!("{typo}tcp='0.0.0.0:7878'\n"), Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("memory_budget"), "{e}");
        // The activation hook: a program and its arguments, no shell.
        let hook = text.replace("[link]", "activate_hook = ['systemctl', 'reload', 'x.service']\n[link]");
        let b = BoardProfile::parse(&format!("{hook}tcp='0.0.0.0:7878'\n"), Path::new("x.toml")).unwrap();
        assert_eq!(b.activate_hook.unwrap(), ["systemctl", "reload", "x.service"]);
        let empty = text.replace("[link]", "activate_hook = []\n[link]");
        let e = BoardProfile::parse(&format!("{empty}tcp='0.0.0.0:7878'\n"), Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains("activate_hook needs a program"), "{e}");
        let zero = text.replace("[link]", "memory_budget_bytes = 0\n[link]");
        assert!(BoardProfile::parse(&format!("{zero}tcp='0.0.0.0:7878'\n"), Path::new("x.toml")).is_err());
    }

    #[test]
    fn onnxruntime_sections() {
        let base = "name='x'\ntarget='t'\ncpu='c'\ncores=2\nthreads=2\nmodel_dir='/tmp/x'\n\
                    [link]\ndefault='tcp'\ntcp='0.0.0.0:7878'\n";
        let none = BoardProfile::parse(base, Path::new("x.toml")).unwrap();
        assert_eq!(none.onnxruntime, OnnxRuntimeProfile::default());
        assert!(none.onnxruntime.tensorrt.engine_cache && none.onnxruntime.tensorrt.timing_cache);
        let text = format!(
            "{base}[onnxruntime]\nlibrary='/opt/ort/lib'\nexecution_providers=['tensorrt','cuda','cpu']\n\
             policy='strict'\n[onnxruntime.tensorrt]\nfp16=true\ntiming_cache=false\n"
        );
        let p = BoardProfile::parse(&text, Path::new("x.toml")).unwrap();
        let o = &p.onnxruntime;
        assert_eq!(o.library.as_deref(), Some(Path::new("/opt/ort/lib")));
        assert_eq!(
            o.execution_providers,
            [ExecutionProvider::TensorRt, ExecutionProvider::Cuda, ExecutionProvider::Cpu]
        );
        assert_eq!(o.policy, EpPolicy::Strict);
        assert!(o.tensorrt.fp16 && o.tensorrt.engine_cache && !o.tensorrt.timing_cache);
        for bad in [
            "[onnxruntime]\nexecution_providers=['gpu']\n",
            "[onnxruntime]\nexecution_providers=['cuda','cuda']\n",
            "[onnxruntime]\npolicy='sometimes'\n",
            "[onnxruntime]\nlibary='/x'\n",
            "[onnxruntime.tensorrt]\nfp32=true\n",
            "[onnxruntime.tensorrt]\nbuilder_optimization_level=9\n",
        ] {
            let e = BoardProfile::parse(&format!("{base}{bad}"), Path::new("x.toml")).unwrap_err();
            assert!(matches!(e, ProfileError::Invalid { .. }), "{bad}: {e}");
        }
        // The shipped boards: TensorRT first on the Jetson, XNNPACK on the Pis.
        let jetson = find("jetson-orin-nano", &[]).unwrap();
        assert_eq!(
            jetson.onnxruntime.execution_providers,
            [ExecutionProvider::TensorRt, ExecutionProvider::Cuda, ExecutionProvider::Cpu]
        );
        assert!(jetson.onnxruntime.tensorrt.fp16 && jetson.onnxruntime.tensorrt.engine_cache);
        assert!(jetson.sensors.nvpmodel);
        for pi in ["raspberry-pi-4", "raspberry-pi-5"] {
            let p = find(pi, &[]).unwrap();
            assert_eq!(p.onnxruntime.execution_providers, [ExecutionProvider::Xnnpack, ExecutionProvider::Cpu], "{pi}");
        }
    }

    #[test]
    fn files_override_compiled_in_profiles() {
        // No directories: the compiled-in profiles.
        let pi4 = find("raspberry-pi-4", &[]).unwrap();
        assert_eq!(pi4.cpu, "cortex-a72");
        let names: Vec<String> = known(&[]).into_iter().map(|b| b.name).collect();
        assert_eq!(names, ["jetson-orin-nano", "loopback", "qemu-aarch64", "raspberry-pi-4", "raspberry-pi-5"]);
        // A file of the same name wins, in find and in the listing.
        let d = tempfile::tempdir().unwrap();
        let text = "name='raspberry-pi-4'\ntarget='t'\ncpu='mine'\ncores=4\nthreads=1\nmodel_dir='/tmp/x'\n\
                    [link]\ndefault='tcp'\ntcp='127.0.0.1:1'\n";
        std::fs::write(d.path().join("raspberry-pi-4.toml"), text).unwrap();
        std::fs::write(d.path().join("extra.toml"), text.replace("raspberry-pi-4", "extra")).unwrap();
        std::fs::write(d.path().join("broken.toml"), "not a profile").unwrap();
        let dirs = [d.path().to_path_buf()];
        assert_eq!(find("raspberry-pi-4", &dirs).unwrap().cpu, "mine");
        let known = known(&dirs);
        let names: Vec<&str> = known.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(
            names,
            ["extra", "jetson-orin-nano", "loopback", "qemu-aarch64", "raspberry-pi-4", "raspberry-pi-5"]
        );
        assert_eq!(known[4].cpu, "mine");
        // An invalid file is an error, not a silent fallback.
        std::fs::write(d.path().join("raspberry-pi-5.toml"), "name = 'raspberry-pi-5'").unwrap();
        assert!(matches!(find("raspberry-pi-5", &dirs), Err(ProfileError::Invalid { .. })));
    }

    #[test]
    fn lookup_order() {
        let dirs = lookup_dirs(Some(Path::new("/x")));
        assert_eq!(dirs.first(), Some(&PathBuf::from("/x")));
        assert_eq!(dirs.last(), Some(&PathBuf::from("/etc/rba/boards")));
        assert!(dirs.contains(&PathBuf::from("boards")));
    }
}
