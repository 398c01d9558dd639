//! The board's ONNX Runtime library: where it is, whether it is new enough,
//! and loading it (once per process: ONNX Runtime allows one library and
//! one environment per process, so each worker process loads its own).
//!
//! The library is found, in order, from: `serve --ort-library PATH`, the
//! board profile's `[onnxruntime] library`, `$ORT_DYLIB_PATH`, the folder
//! `capi/` of python3's `onnxruntime` package (asked of `python3` without
//! importing it, then the usual site-packages folders), then the system's
//! library folders and the `ldconfig` cache. A path may name the file or a
//! folder holding `libonnxruntime.so*`. A path given explicitly (flag,
//! profile, environment) that does not hold a library is an error, not a
//! reason to look further.
//!
//! rba-device is built with `ort`'s API 17: it runs with ONNX Runtime 1.17
//! and newer. The version is read from the file name
//! (`libonnxruntime.so.1.20.1`, after following links) before loading,
//! else from the library's build information after loading; `ort` checks
//! it again itself (`OrtGetApiBase()->GetVersionString`) when it loads the
//! library.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

/// The ONNX Runtime API rba-device is built against (`ort`'s `api-17`).
pub const API_MINOR: u32 = 17;

/// The `ort` crate rba-device is built with.
pub const ORT_CRATE: &str = "ort 2.0.0-rc.15";

/// The environment variable `ort` itself honours.
pub const ENV_VAR: &str = "ORT_DYLIB_PATH";

/// The library's file name stem.
const STEM: &str = "libonnxruntime.so";

/// An ONNX Runtime version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl Version {
    /// `1.20.1`, `1.20` (patch 0).
    pub fn parse(text: &str) -> Option<Version> {
        let mut parts = text.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = match parts.next() {
            Some(p) => p.parse().ok()?,
            None => 0,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Version { major, minor, patch })
    }

    /// The version in a library's file name: `libonnxruntime.so.1.20.1`
    /// (`libonnxruntime.so.1` and `libonnxruntime.so` carry none).
    pub fn from_file_name(name: &str) -> Option<Version> {
        let rest = name.strip_prefix(STEM)?.strip_prefix('.')?;
        let v = Version::parse(rest)?;
        (rest.split('.').count() >= 2).then_some(v)
    }

    /// The version in ONNX Runtime's build information
    /// (`ORT Build Info: git-branch=rel-1.19.0, git-commit-id=...`).
    pub fn from_build_info(info: &str) -> Option<Version> {
        let at = info.find("rel-")? + 4;
        let rest = &info[at..];
        let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        Version::parse(&rest[..end])
    }

    /// Whether this library serves the API rba-device is built against.
    pub fn supported(self) -> bool {
        self.major > 1 || (self.major == 1 && self.minor >= API_MINOR)
    }
}

/// Why there is no usable ONNX Runtime.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LibraryError {
    #[error(
        "no ONNX Runtime library found (looked in {}); install it (`pip install onnxruntime`, on a Jetson the \
         onnxruntime-gpu wheel: boards/README.md) or name it with `rba-device serve --ort-library PATH`, the board \
         profile's [onnxruntime] library, or ${ENV_VAR}",
        looked.join(", ")
    )]
    NotFound { looked: Vec<String> },
    #[error("{origin} names {path}, which holds no ONNX Runtime library ({STEM}*)")]
    Missing { origin: String, path: String },
    #[error(
        "onnxruntime {found} ({path}) is older than 1.{API_MINOR}, the oldest this rba-device supports (built with \
         {ORT_CRATE}, ONNX Runtime API {API_MINOR}): install onnxruntime 1.{API_MINOR} or newer"
    )]
    TooOld { path: String, found: String },
    #[error("cannot load onnxruntime from {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("{path} is not an ONNX Runtime library (it exports no OrtGetApiBase)")]
    NotOrt { path: String },
    #[error(
        "this process already loaded onnxruntime from {loaded}; it cannot load {wanted} as well (one library per \
         process)"
    )]
    AlreadyLoaded { loaded: String, wanted: String },
    #[error("onnxruntime {version} ({path}) cannot create its environment: {reason}")]
    Environment { path: String, version: String, reason: String },
}

/// Where to look for the library (see the module's documentation).
#[derive(Clone, Debug, Default)]
pub struct Search {
    /// `serve --ort-library`.
    pub flag: Option<PathBuf>,
    /// The board profile's `[onnxruntime] library`.
    pub profile: Option<PathBuf>,
    /// `$ORT_DYLIB_PATH`.
    pub env: Option<PathBuf>,
    /// Ask this interpreter where its `onnxruntime` package is (`None`: don't).
    pub python: Option<String>,
    /// Folders holding `pythonX.Y/{site,dist}-packages`.
    pub python_roots: Vec<PathBuf>,
    /// System library folders.
    pub system: Vec<PathBuf>,
    /// Ask `ldconfig -p` for `libonnxruntime.so*`.
    pub ldconfig: bool,
}

impl Search {
    /// The standard search: the flag and profile given, `$ORT_DYLIB_PATH`,
    /// python3, the usual site-packages and system folders, ldconfig.
    pub fn standard(flag: Option<PathBuf>, profile: Option<PathBuf>) -> Search {
        let env = std::env::var_os(ENV_VAR).filter(|v| !v.is_empty()).map(PathBuf::from);
        let mut python_roots = vec![PathBuf::from("/usr/lib"), PathBuf::from("/usr/local/lib")];
        if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            python_roots.push(Path::new(&home).join(".local/lib"));
        }
        let triple = format!("/usr/lib/{}-linux-gnu", std::env::consts::ARCH);
        let system =
            ["/usr/lib", "/usr/local/lib", triple.as_str(), "/usr/lib64", "/opt/onnxruntime/lib"].map(PathBuf::from);
        Search {
            flag,
            profile,
            env,
            python: Some("python3".into()),
            python_roots,
            system: system.to_vec(),
            ldconfig: true,
        }
    }
}

/// A library found, before loading it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The file (links followed).
    pub path: PathBuf,
    /// Where it was found: `--ort-library`, `python3's onnxruntime package`, ...
    pub origin: String,
    /// From the file name, where it says.
    pub version: Option<Version>,
}

impl Found {
    /// [`LibraryError::TooOld`] when the file name says the library is
    /// older than the API rba-device is built against.
    pub fn check_version(&self) -> Result<(), LibraryError> {
        check_version(&self.path, self.version)
    }
}

/// Refuses a known version older than the API rba-device is built against.
pub fn check_version(path: &Path, version: Option<Version>) -> Result<(), LibraryError> {
    match version {
        Some(v) if !v.supported() => {
            Err(LibraryError::TooOld { path: path.display().to_string(), found: v.to_string() })
        }
        _ => Ok(()),
    }
}

/// `libonnxruntime.so*` files in `dir`, the best first: the highest
/// version in the name, then the plain names.
fn candidates_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut found: Vec<(Option<Version>, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = name == STEM || name.strip_prefix(STEM).is_some_and(|r| r.starts_with('.'));
            (ours && e.path().is_file()).then(|| (Version::from_file_name(&name), e.path()))
        })
        .collect();
    found.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
    found.into_iter().map(|(_, p)| p).collect()
}

/// The library at `path`: the file itself, or the best one in the folder.
fn library_at(path: &Path) -> Option<PathBuf> {
    if path.is_dir() {
        candidates_in(path).into_iter().next()
    } else if path.is_file() {
        Some(path.to_path_buf())
    } else {
        None
    }
}

fn found(path: PathBuf, origin: &str) -> Found {
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    let version = path.file_name().and_then(|n| Version::from_file_name(&n.to_string_lossy()));
    Found { path, origin: origin.to_string(), version }
}

/// The folder of python's `onnxruntime` package, found without importing
/// it (an import would load the library and numpy).
fn python_package(python: &str) -> Option<PathBuf> {
    let script = "import importlib.util as u\ns = u.find_spec('onnxruntime')\n\
                  print(s.submodule_search_locations[0] if s and s.submodule_search_locations else '')";
    let out = Command::new(python).args(["-c", script]).output().ok()?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !dir.is_empty()).then(|| PathBuf::from(dir))
}

/// `<root>/pythonX.Y/{site,dist}-packages/onnxruntime/capi` under each root.
fn site_packages(roots: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for root in roots {
        let Ok(entries) = std::fs::read_dir(root) else { continue };
        let mut pythons: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
            .map(|e| e.path())
            .collect();
        pythons.sort();
        pythons.reverse();
        for p in pythons {
            for kind in ["site-packages", "dist-packages"] {
                dirs.push(p.join(kind).join("onnxruntime/capi"));
            }
        }
    }
    dirs
}

/// `libonnxruntime.so*` paths in `ldconfig -p`'s cache.
fn ldconfig_paths() -> Vec<PathBuf> {
    for cmd in ["ldconfig", "/sbin/ldconfig", "/usr/sbin/ldconfig"] {
        if let Ok(out) = Command::new(cmd).arg("-p").output() {
            if out.status.success() {
                return parse_ldconfig(&String::from_utf8_lossy(&out.stdout));
            }
        }
    }
    Vec::new()
}

/// The paths of `libonnxruntime.so*` lines in `ldconfig -p` output
/// (`\tlibonnxruntime.so.1 (libc6,AArch64) => /usr/lib/libonnxruntime.so.1`).
pub fn parse_ldconfig(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let (name, path) = l.split_once("=>")?;
            let name = name.split_whitespace().next()?;
            let ours = name == STEM || name.strip_prefix(STEM).is_some_and(|r| r.starts_with('.'));
            ours.then(|| PathBuf::from(path.trim()))
        })
        .collect()
}

/// Finds the library as `search` says (see the module's documentation).
pub fn locate(search: &Search) -> Result<Found, LibraryError> {
    let explicit = [
        (&search.flag, "--ort-library"),
        (&search.profile, "the board profile's [onnxruntime] library"),
        (&search.env, "$ORT_DYLIB_PATH"),
    ];
    for (path, origin) in explicit {
        if let Some(path) = path {
            return match library_at(path) {
                Some(p) => Ok(found(p, origin)),
                None => Err(LibraryError::Missing { origin: origin.into(), path: path.display().to_string() }),
            };
        }
    }
    let mut looked = Vec::new();
    if let Some(python) = &search.python {
        match python_package(python) {
            Some(pkg) => {
                let capi = pkg.join("capi");
                if let Some(p) = library_at(&capi) {
                    return Ok(found(p, &format!("{python}'s onnxruntime package")));
                }
                looked.push(capi.display().to_string());
            }
            None => looked.push(format!("{python}'s onnxruntime package (none)")),
        }
    }
    for dir in site_packages(&search.python_roots) {
        if let Some(p) = library_at(&dir) {
            return Ok(found(p, "a python onnxruntime package"));
        }
    }
    looked.extend(search.python_roots.iter().map(|r| format!("{}/python3*/{{site,dist}}-packages", r.display())));
    for dir in &search.system {
        if let Some(p) = library_at(dir) {
            return Ok(found(p, &dir.display().to_string()));
        }
        looked.push(dir.display().to_string());
    }
    if search.ldconfig {
        if let Some(p) = ldconfig_paths().into_iter().find(|p| p.is_file()) {
            return Ok(found(p, "the ldconfig cache"));
        }
        looked.push("the ldconfig cache".into());
    }
    Err(LibraryError::NotFound { looked })
}

/// ONNX Runtime loaded in this process, with its one environment.
pub struct Loaded {
    pub path: PathBuf,
    /// `1.20.1`, or what the build information says.
    pub version: String,
    pub environment: ort::environment::Environment,
    /// What `GetAvailableProviders` lists, among the providers rba-device
    /// knows (`CPUExecutionProvider`, ...).
    pub providers: Vec<String>,
}

impl fmt::Debug for Loaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loaded").field("path", &self.path).field("version", &self.version).finish()
    }
}

static LOADED: Mutex<Option<Arc<Loaded>>> = Mutex::new(None);

/// Loads the library `found` names (once per process; the same library
/// again is free, another one an error) and creates the environment.
pub fn load(found: &Found) -> Result<Arc<Loaded>, LibraryError> {
    let mut slot = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(l) = slot.as_ref() {
        return if l.path == found.path {
            Ok(l.clone())
        } else {
            Err(LibraryError::AlreadyLoaded {
                loaded: l.path.display().to_string(),
                wanted: found.path.display().to_string(),
            })
        };
    }
    found.check_version()?;
    let path = found.path.display().to_string();
    let builder = ort::init_from(&found.path).map_err(|e| match e {
        ort::LoadDynamicError::Dlopen { error, .. } => {
            LibraryError::Load { path: path.clone(), reason: error.to_string() }
        }
        ort::LoadDynamicError::MissingApi { .. } => LibraryError::NotOrt { path: path.clone() },
        ort::LoadDynamicError::BadVersion { version_str, .. } => {
            LibraryError::TooOld { path: path.clone(), found: version_str }
        }
        other => LibraryError::Load { path: path.clone(), reason: other.to_string() },
    })?;
    let version = found
        .version
        .map(|v| v.to_string())
        .or_else(|| Version::from_build_info(ort::info()).map(|v| v.to_string()))
        .unwrap_or_else(|| format!("1.{API_MINOR} or newer"));
    let environment =
        builder.with_name("rba-device").with_telemetry(false).with_logger(Arc::new(ort_log)).build().map_err(|e| {
            LibraryError::Environment { path: path.clone(), version: version.clone(), reason: e.to_string() }
        })?;
    let providers = available_providers();
    log::debug!("onnxruntime {version} loaded from {path}; providers: {}", providers.join(", "));
    let loaded = Arc::new(Loaded { path: found.path.clone(), version, environment, providers });
    *slot = Some(loaded.clone());
    Ok(loaded)
}

/// The library loaded in this process, if any.
pub fn loaded() -> Option<Arc<Loaded>> {
    LOADED.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// ONNX Runtime's own log lines, into the daemon's log.
fn ort_log(level: ort::logging::LogLevel, category: &str, _id: &str, _location: &str, message: &str) {
    use ort::logging::LogLevel;
    match level {
        LogLevel::Fatal | LogLevel::Error => log::warn!("onnxruntime: {message}"),
        LogLevel::Warning => log::info!("onnxruntime: {message}"),
        LogLevel::Info => log::debug!("onnxruntime [{category}]: {message}"),
        LogLevel::Verbose => log::trace!("onnxruntime [{category}]: {message}"),
    }
}

/// The providers `GetAvailableProviders` lists, among those `ort` knows
/// here (the ones rba-device can register, and the other edge ones).
fn available_providers() -> Vec<String> {
    use ort::ep;
    fn check<E: ort::ep::ExecutionProvider>(list: &mut Vec<String>) {
        if E::is_available().unwrap_or(false) {
            list.push(E::NAME.to_string());
        }
    }
    let mut list = Vec::new();
    check::<ep::TensorRT>(&mut list);
    check::<ep::CUDA>(&mut list);
    check::<ep::XNNPACK>(&mut list);
    check::<ep::ACL>(&mut list);
    check::<ep::OpenVINO>(&mut list);
    check::<ep::OneDNN>(&mut list);
    check::<ep::QNN>(&mut list);
    check::<ep::ROCm>(&mut list);
    check::<ep::MIGraphX>(&mut list);
    check::<ep::NNAPI>(&mut list);
    check::<ep::RKNPU>(&mut list);
    check::<ep::CPU>(&mut list);
    list
}

/// The runtime as [`rba_protocol::RuntimeInfo`] reports it, after
/// loading it here: its version and providers, or why it cannot run.
pub fn probe(search: &Search) -> Result<(Found, Arc<Loaded>), LibraryError> {
    let found = locate(search)?;
    let loaded = load(&found)?;
    Ok((found, loaded))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_names_and_build_info() {
        let v = |a, b, c| Some(Version { major: a, minor: b, patch: c });
        assert_eq!(Version::from_file_name("libonnxruntime.so.1.20.1"), v(1, 20, 1));
        assert_eq!(Version::from_file_name("libonnxruntime.so.1.32.0"), v(1, 32, 0));
        assert_eq!(Version::from_file_name("libonnxruntime.so.1.16"), v(1, 16, 0));
        assert_eq!(Version::from_file_name("libonnxruntime.so.1"), None, "the soname alone says no minor");
        assert_eq!(Version::from_file_name("libonnxruntime.so"), None);
        assert_eq!(Version::from_file_name("libonnxruntime_providers_cuda.so"), None);
        assert_eq!(Version::from_file_name("libonnxruntime.so.x.y"), None);
        let info = "ORT Build Info: git-branch=rel-1.19.0, git-commit-id=26250ae, build type=Release";
        assert_eq!(Version::from_build_info(info), v(1, 19, 0));
        assert_eq!(Version::from_build_info("ORT Build Info: git-branch=main"), None);
        assert!(Version::parse("1.17.0").unwrap().supported());
        assert!(Version::parse("1.32.0").unwrap().supported());
        assert!(Version::parse("2.0").unwrap().supported());
        assert!(!Version::parse("1.16.3").unwrap().supported());
    }

    #[test]
    fn a_too_old_library_names_both_versions() {
        let path = Path::new("/opt/ort/libonnxruntime.so.1.16.3");
        let e = check_version(path, Version::from_file_name("libonnxruntime.so.1.16.3")).unwrap_err();
        assert_eq!(e, LibraryError::TooOld { path: path.display().to_string(), found: "1.16.3".into() });
        let text = e.to_string();
        assert!(text.contains("onnxruntime 1.16.3"), "{text}");
        assert!(text.contains("older than 1.17"), "{text}");
        assert!(text.contains("ONNX Runtime API 17") && text.contains(ORT_CRATE), "{text}");
        assert!(check_version(path, Version::parse("1.17.0")).is_ok());
        assert!(check_version(path, None).is_ok(), "unknown: ort checks it when loading");
    }

    fn empty_search() -> Search {
        Search { python: None, ldconfig: false, ..Search::default() }
    }

    #[test]
    fn explicit_paths_win_and_a_wrong_one_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let lib = d.path().join("lib");
        std::fs::create_dir_all(&lib).unwrap();
        for name in ["libonnxruntime.so.1.18.0", "libonnxruntime.so.1.20.1", "libonnxruntime_providers_shared.so"] {
            std::fs::write(lib.join(name), b"x").unwrap();
        }
        std::os::unix::fs::symlink("libonnxruntime.so.1.20.1", lib.join("libonnxruntime.so")).unwrap();
        // A folder: its newest library.
        let s = Search { flag: Some(lib.clone()), ..empty_search() };
        let f = locate(&s).unwrap();
        assert_eq!(f.path.file_name().unwrap(), "libonnxruntime.so.1.20.1");
        assert_eq!((f.origin.as_str(), f.version), ("--ort-library", Version::parse("1.20.1")));
        // A link: followed to its file and version.
        let s = Search { profile: Some(lib.join("libonnxruntime.so")), env: Some("/nowhere".into()), ..empty_search() };
        let f = locate(&s).unwrap();
        assert_eq!(
            (f.path.file_name().unwrap().to_str(), f.version),
            (Some("libonnxruntime.so.1.20.1"), Version::parse("1.20.1"))
        );
        assert!(f.origin.contains("board profile"));
        // An explicit path that holds none stops the search.
        let s = Search { env: Some(d.path().join("missing")), system: vec![lib.clone()], ..empty_search() };
        let e = locate(&s).unwrap_err();
        assert!(matches!(&e, LibraryError::Missing { origin, .. } if origin == "$ORT_DYLIB_PATH"), "{e}");
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[test]
    fn python_folders_then_system_folders_and_the_misses_are_listed() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("usr/lib");
        let capi = root.join("python3.10/dist-packages/onnxruntime/capi");
        std::fs::create_dir_all(&capi).unwrap();
        let sys = d.path().join("sys");
        std::fs::create_dir_all(&sys).unwrap();
        std::fs::write(sys.join("libonnxruntime.so.1.17.3"), b"x").unwrap();
        let s = Search {
            python_roots: vec![root.clone()],
            system: vec![d.path().join("none"), sys.clone()],
            ..empty_search()
        };
        let f = locate(&s).unwrap();
        assert_eq!(f.version, Version::parse("1.17.3"), "an empty capi folder is passed over");
        assert_eq!(f.origin, sys.display().to_string());
        std::fs::write(capi.join("libonnxruntime.so.1.20.0"), b"x").unwrap();
        let f = locate(&s).unwrap();
        assert_eq!((f.version, f.origin.as_str()), (Version::parse("1.20.0"), "a python onnxruntime package"));
        // Nothing anywhere: every place is named.
        let s =
            Search { python_roots: vec![d.path().join("nope")], system: vec![d.path().join("none")], ..empty_search() };
        let e = locate(&s).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("no ONNX Runtime library found"), "{text}");
        assert!(text.contains(&d.path().join("none").display().to_string()), "{text}");
        assert!(text.contains("python3*/{site,dist}-packages"), "{text}");
        assert!(text.contains("--ort-library"), "{text}");
    }

    #[test]
    fn ldconfig_lines() {
        let text = "1234 libs found in cache `/etc/ld.so.cache'\n\
                    \tlibonnxruntime.so.1 (libc6,AArch64) => /usr/lib/aarch64-linux-gnu/libonnxruntime.so.1\n\
                    \tlibonnxruntime_providers_shared.so (libc6,AArch64) => /usr/lib/libonnxruntime_providers_shared.so\n\
                    \tlibc.so.6 (libc6,AArch64) => /lib/aarch64-linux-gnu/libc.so.6\n";
        assert_eq!(parse_ldconfig(text), [PathBuf::from("/usr/lib/aarch64-linux-gnu/libonnxruntime.so.1")]);
    }

    #[test]
    fn a_file_that_is_no_library_does_not_load() {
        let d = tempfile::tempdir().unwrap();
        let fake = d.path().join("libonnxruntime.so.1.20.0");
        std::fs::write(&fake, b"not an ELF file").unwrap();
        let f = locate(&Search { flag: Some(fake.clone()), ..empty_search() }).unwrap();
        let e = load(&f).unwrap_err();
        assert!(matches!(&e, LibraryError::Load { path, .. } if path.contains("libonnxruntime.so.1.20.0")), "{e}");
        assert!(e.to_string().starts_with("cannot load onnxruntime from "), "{e}");
        // The version check comes first: a name saying 1.16 is refused unloaded.
        let old = d.path().join("libonnxruntime.so.1.16.3");
        std::fs::write(&old, b"x").unwrap();
        let f = locate(&Search { flag: Some(old), ..empty_search() }).unwrap();
        assert!(matches!(load(&f).unwrap_err(), LibraryError::TooOld { found, .. } if found == "1.16.3"));
    }
}
