//! What the board tells about its accelerator: the board model
//! (`/proc/device-tree/model`), and on a Jetson the power mode (`nvpmodel
//! -q`, else `/etc/nvpmodel.conf` with the mode in
//! `/var/lib/nvpmodel/status`), the GPU's frequency (its devfreq node) and
//! load (`/sys/devices/gpu.0/load` and the like, in tenths of a percent).
//! Every reading is optional; paths hang off one root so tests use a fake
//! tree (as [`crate::sensors`] does).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use rba_protocol::AcceleratorInfo;

/// Where the readings come from.
#[derive(Clone, Debug)]
pub struct Accelerator {
    /// Usually `/`.
    pub root: PathBuf,
    /// Ask `nvpmodel -q` first (the board profile's `sensors.nvpmodel`).
    pub use_nvpmodel: bool,
}

impl Default for Accelerator {
    fn default() -> Self {
        Accelerator { root: "/".into(), use_nvpmodel: false }
    }
}

/// devfreq nodes of NVIDIA GPUs (Orin's ga10b, Xavier's gv11b, TX2's
/// gp10b, Nano's gm20b, and generic names).
const GPU_DEVFREQ: [&str; 6] = ["ga10b", "gv11b", "gp10b", "gm20b", "gpu", "gr3d"];

fn read_trim(p: &Path) -> Option<String> {
    let t = fs::read_to_string(p).ok()?;
    let t = t.trim_matches(|c: char| c.is_whitespace() || c == '\0').to_string();
    (!t.is_empty()).then_some(t)
}

fn read_u64(p: &Path) -> Option<u64> {
    read_trim(p)?.parse().ok()
}

/// The power mode from `nvpmodel -q` output (`NV Power Mode: 15W\n0\n`).
pub fn parse_nvpmodel_query(text: &str) -> Option<String> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let name = lines.find_map(|l| l.strip_prefix("NV Power Mode:"))?.trim().to_string();
    let id = lines.next().and_then(|l| l.parse::<u32>().ok());
    Some(match id {
        Some(id) => format!("{name} (mode {id})"),
        None => name,
    })
}

/// Mode names by id (`< POWER_MODEL ID=0 NAME=15W >`) and the default
/// (`< PM_CONFIG DEFAULT=2 >`) from `/etc/nvpmodel.conf`.
pub fn parse_nvpmodel_conf(text: &str) -> (Vec<(u32, String)>, Option<u32>) {
    let field = |line: &str, key: &str| -> Option<String> {
        let at = line.find(key)? + key.len();
        let rest = &line[at..];
        let end = rest.find(|c: char| c.is_whitespace() || c == '>').unwrap_or(rest.len());
        Some(rest[..end].to_string())
    };
    let mut modes = Vec::new();
    let mut default = None;
    for line in text.lines().map(str::trim) {
        if line.starts_with("< POWER_MODEL") {
            if let (Some(id), Some(name)) = (field(line, "ID=").and_then(|i| i.parse().ok()), field(line, "NAME=")) {
                modes.push((id, name));
            }
        } else if line.starts_with("< PM_CONFIG") {
            default = field(line, "DEFAULT=").and_then(|d| d.parse().ok());
        }
    }
    (modes, default)
}

/// The mode in nvpmodel's status file (`pmode:0001 fmode:...`).
pub fn parse_nvpmodel_status(text: &str) -> Option<u32> {
    let at = text.find("pmode:")? + 6;
    let digits: String = text[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

impl Accelerator {
    fn at(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// `/proc/device-tree/model` (NUL-terminated).
    pub fn model(&self) -> Option<String> {
        read_trim(&self.at("proc/device-tree/model"))
    }

    /// Whether this is a Jetson (its device-tree model says NVIDIA).
    pub fn is_jetson(&self) -> bool {
        self.model().is_some_and(|m| m.contains("NVIDIA") || m.contains("Jetson"))
    }

    /// The power mode: `nvpmodel -q` where allowed, else the configuration
    /// file and the status file (else the configuration's default).
    pub fn power_mode(&self) -> Option<String> {
        if self.use_nvpmodel {
            if let Ok(out) = Command::new("nvpmodel").arg("-q").output() {
                if out.status.success() {
                    if let Some(mode) = parse_nvpmodel_query(&String::from_utf8_lossy(&out.stdout)) {
                        return Some(mode);
                    }
                }
            }
        }
        let (modes, default) = parse_nvpmodel_conf(&fs::read_to_string(self.at("etc/nvpmodel.conf")).ok()?);
        let id = fs::read_to_string(self.at("var/lib/nvpmodel/status"))
            .ok()
            .and_then(|s| parse_nvpmodel_status(&s))
            .or(default)?;
        let name = modes.iter().find(|(i, _)| *i == id).map(|(_, n)| n.clone());
        Some(match name {
            Some(n) => format!("{n} (mode {id})"),
            None => format!("mode {id}"),
        })
    }

    /// The GPU's devfreq folder (`/sys/class/devfreq/17000000.ga10b`).
    pub fn gpu_devfreq(&self) -> Option<PathBuf> {
        let dir = self.at("sys/class/devfreq");
        let mut nodes: Vec<PathBuf> = fs::read_dir(&dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| GPU_DEVFREQ.iter().any(|g| n.contains(g)))
            })
            .collect();
        nodes.sort();
        nodes.into_iter().next()
    }

    /// GPU load in percent: the devfreq device's `load`, else the Jetson
    /// paths (`/sys/devices/gpu.0/load`, `/sys/devices/platform/gpu.0/load`);
    /// the file counts tenths of a percent.
    pub fn gpu_load_pct(&self) -> Option<f32> {
        let mut files: Vec<PathBuf> = self.gpu_devfreq().map(|d| d.join("device/load")).into_iter().collect();
        files.push(self.at("sys/devices/gpu.0/load"));
        files.push(self.at("sys/devices/platform/gpu.0/load"));
        files.iter().find_map(|f| read_u64(f)).map(|permille| permille.min(1000) as f32 / 10.0)
    }

    /// Everything readable; `None` when nothing is (no accelerator known).
    pub fn info(&self) -> Option<AcceleratorInfo> {
        let devfreq = self.gpu_devfreq();
        let info = AcceleratorInfo {
            model: self.model(),
            power_mode: self.power_mode(),
            gpu_freq_hz: devfreq.as_ref().and_then(|d| read_u64(&d.join("cur_freq"))),
            gpu_max_freq_hz: devfreq.as_ref().and_then(|d| read_u64(&d.join("max_freq"))),
            gpu_load_pct: self.gpu_load_pct(),
        };
        let any = info.power_mode.is_some() || info.gpu_freq_hz.is_some() || info.gpu_load_pct.is_some();
        (any || info.model.is_some()).then_some(info)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn put(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    const CONF: &str = "< PARAM TYPE=FILE NAME=CPU_ONLINE >\n\
                        CORE_0 /sys/devices/system/cpu/cpu0/online\n\
                        < POWER_MODEL ID=0 NAME=15W >\n\
                        CPU_ONLINE CORE_0 1\n\
                        < POWER_MODEL ID=1 NAME=7W >\n\
                        CPU_ONLINE CORE_0 1\n\
                        < POWER_MODEL ID=2 NAME=MAXN_SUPER >\n\
                        < PM_CONFIG DEFAULT=0 >\n";

    #[test]
    fn a_fake_orin_nano() {
        let d = tempfile::tempdir().unwrap();
        let a = Accelerator { root: d.path().to_path_buf(), use_nvpmodel: false };
        assert_eq!(a.info(), None, "an empty tree knows nothing");
        put(d.path(), "proc/device-tree/model", "NVIDIA Jetson Orin Nano Developer Kit\0");
        put(d.path(), "etc/nvpmodel.conf", CONF);
        put(d.path(), "sys/class/devfreq/17000000.ga10b/cur_freq", "306000000\n");
        put(d.path(), "sys/class/devfreq/17000000.ga10b/max_freq", "624750000\n");
        put(d.path(), "sys/class/devfreq/17000000.ga10b/device/load", "437\n");
        put(d.path(), "sys/class/devfreq/3d00000.other/cur_freq", "1\n");
        assert!(a.is_jetson());
        let info = a.info().unwrap();
        assert_eq!(info.model.as_deref(), Some("NVIDIA Jetson Orin Nano Developer Kit"));
        assert_eq!(info.power_mode.as_deref(), Some("15W (mode 0)"), "no status file: the default");
        assert_eq!((info.gpu_freq_hz, info.gpu_max_freq_hz), (Some(306_000_000), Some(624_750_000)));
        assert_eq!(info.gpu_load_pct, Some(43.7));
        // The status file names the current mode.
        put(d.path(), "var/lib/nvpmodel/status", "pmode:0002 fmode:fanNull\n");
        assert_eq!(a.power_mode().as_deref(), Some("MAXN_SUPER (mode 2)"));
        put(d.path(), "var/lib/nvpmodel/status", "pmode:0007\n");
        assert_eq!(a.power_mode().as_deref(), Some("mode 7"), "a mode the configuration does not name");
    }

    #[test]
    fn older_jetson_load_paths_and_a_pi() {
        let d = tempfile::tempdir().unwrap();
        let a = Accelerator { root: d.path().to_path_buf(), use_nvpmodel: false };
        put(d.path(), "sys/devices/gpu.0/load", "1000\n");
        assert_eq!(a.gpu_load_pct(), Some(100.0));
        let d = tempfile::tempdir().unwrap();
        let pi = Accelerator { root: d.path().to_path_buf(), use_nvpmodel: false };
        put(d.path(), "proc/device-tree/model", "Raspberry Pi 5 Model B Rev 1.0\0");
        let info = pi.info().unwrap();
        assert!(!pi.is_jetson());
        assert_eq!(info.model.as_deref(), Some("Raspberry Pi 5 Model B Rev 1.0"));
        assert_eq!((info.power_mode, info.gpu_freq_hz, info.gpu_load_pct), (None, None, None));
    }

    #[test]
    fn nvpmodel_texts() {
        assert_eq!(parse_nvpmodel_query("NV Power Mode: 15W\n0\n").as_deref(), Some("15W (mode 0)"));
        assert_eq!(
            parse_nvpmodel_query("NVPM WARN: fan mode is not set!\nNV Power Mode: MAXN\n").as_deref(),
            Some("MAXN")
        );
        assert_eq!(parse_nvpmodel_query("garbage"), None);
        let (modes, default) = parse_nvpmodel_conf(CONF);
        assert_eq!(modes, [(0, "15W".to_string()), (1, "7W".to_string()), (2, "MAXN_SUPER".to_string())]);
        assert_eq!(default, Some(0));
        assert_eq!(parse_nvpmodel_status("pmode:0001 fmode:quiet"), Some(1));
        assert_eq!(parse_nvpmodel_status("nothing"), None);
    }
}
