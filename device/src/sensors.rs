//! What the board tells about itself through /proc and /sys: peak RSS,
//! memory, CPU temperature, throttling. Every reading is optional: boards
//! differ, and containers hide some of it.
//!
//! Paths are relative to configurable roots so tests can use a fake tree.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use rba_protocol::boards::SensorProfile;
use rba_protocol::Throttling;

/// Raspberry Pi firmware throttle flags (`get_throttled`, `vcgencmd get_throttled`).
pub mod rpi_bits {
    pub const UNDER_VOLTAGE: u32 = 1 << 0;
    pub const FREQ_CAPPED: u32 = 1 << 1;
    pub const THROTTLED: u32 = 1 << 2;
    pub const SOFT_TEMP_LIMIT: u32 = 1 << 3;
    pub const UNDER_VOLTAGE_OCCURRED: u32 = 1 << 16;
    pub const FREQ_CAPPED_OCCURRED: u32 = 1 << 17;
    pub const THROTTLED_OCCURRED: u32 = 1 << 18;
    pub const SOFT_TEMP_LIMIT_OCCURRED: u32 = 1 << 19;
}

/// Where this board's readings come from.
#[derive(Clone, Debug)]
pub struct Sensors {
    /// Usually `/sys`.
    pub sys: PathBuf,
    /// Usually `/proc`.
    pub proc: PathBuf,
    /// A specific temperature file (millidegrees), from the board profile.
    pub thermal_zone: Option<PathBuf>,
    /// A specific throttle file (hex flags), from the board profile.
    pub throttle_file: Option<PathBuf>,
    /// Ask `vcgencmd get_throttled` when no throttle file exists.
    pub use_vcgencmd: bool,
}

impl Default for Sensors {
    fn default() -> Self {
        Sensors {
            sys: "/sys".into(),
            proc: "/proc".into(),
            thermal_zone: None,
            throttle_file: None,
            use_vcgencmd: true,
        }
    }
}

/// CPU cores this process may use (1 if unknown).
pub fn cores() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
}

/// A `kB` field of a /proc status-like file, in bytes.
fn kb_field(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        kb.checked_mul(1024)
    })
}

/// Parses `0x50005`, `throttled=0x50005` or `50005` (hex).
pub fn parse_throttled(text: &str) -> Option<u32> {
    let t = text.trim();
    let t = t.strip_prefix("throttled=").unwrap_or(t);
    let t = t.strip_prefix("0x").unwrap_or(t);
    u32::from_str_radix(t, 16).ok()
}

/// Throttling from Raspberry Pi flags: current state plus what happened
/// since boot (the firmware's sticky bits).
pub fn throttling_from_rpi(raw: u32) -> Throttling {
    use rpi_bits::*;
    Throttling {
        throttled: raw & (FREQ_CAPPED | THROTTLED | FREQ_CAPPED_OCCURRED | THROTTLED_OCCURRED) != 0,
        under_voltage: raw & (UNDER_VOLTAGE | UNDER_VOLTAGE_OCCURRED) != 0,
        soft_temp_limit: raw & (SOFT_TEMP_LIMIT | SOFT_TEMP_LIMIT_OCCURRED) != 0,
        raw: Some(raw),
    }
}

impl Sensors {
    /// The sensors a board profile names. Without a profile, the defaults
    /// but no `vcgencmd`: only a Raspberry Pi has it, and its profile says so.
    pub fn for_profile(profile: Option<&SensorProfile>) -> Sensors {
        match profile {
            Some(p) => Sensors {
                thermal_zone: p.thermal_zone.clone(),
                throttle_file: p.throttle.clone(),
                use_vcgencmd: p.vcgencmd,
                ..Sensors::default()
            },
            None => Sensors { use_vcgencmd: false, ..Sensors::default() },
        }
    }

    /// Peak resident set size of this process (VmHWM).
    pub fn peak_rss(&self) -> Option<u64> {
        kb_field(&fs::read_to_string(self.proc.join("self/status")).ok()?, "VmHWM")
    }

    /// Resets the peak RSS to the current RSS (Linux `clear_refs` 5), so the
    /// next reading covers one job. False where the kernel does not allow it.
    pub fn reset_peak_rss(&self) -> bool {
        fs::write(self.proc.join("self/clear_refs"), b"5").is_ok()
    }

    pub fn memory_total(&self) -> Option<u64> {
        kb_field(&fs::read_to_string(self.proc.join("meminfo")).ok()?, "MemTotal")
    }

    pub fn memory_available(&self) -> Option<u64> {
        kb_field(&fs::read_to_string(self.proc.join("meminfo")).ok()?, "MemAvailable")
    }

    pub fn hostname(&self) -> Option<String> {
        let h = fs::read_to_string(self.proc.join("sys/kernel/hostname")).ok()?;
        let h = h.trim();
        (!h.is_empty()).then(|| h.to_string())
    }

    /// CPU temperature in °C: the profile's zone, else the first thermal
    /// zone whose type names the CPU or SoC, else the hottest zone.
    pub fn cpu_temp(&self) -> Option<f32> {
        if let Some(z) = &self.thermal_zone {
            return read_millideg(z);
        }
        let dir = self.sys.join("class/thermal");
        let mut zones: Vec<PathBuf> = fs::read_dir(&dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("thermal_zone")))
            .collect();
        zones.sort();
        let mut hottest: Option<f32> = None;
        for z in &zones {
            let Some(t) = read_millideg(&z.join("temp")) else { continue };
            let kind = fs::read_to_string(z.join("type")).unwrap_or_default().to_ascii_lowercase();
            if ["cpu", "soc", "x86_pkg", "coretemp"].iter().any(|k| kind.contains(k)) {
                return Some(t);
            }
            hottest = Some(hottest.map_or(t, |h: f32| h.max(t)));
        }
        hottest
    }

    /// Throttling, where the board exposes it (Raspberry Pi firmware flags
    /// via /sys or `vcgencmd`).
    pub fn throttling(&self) -> Option<Throttling> {
        let file = self
            .throttle_file
            .clone()
            .unwrap_or_else(|| self.sys.join("devices/platform/soc/soc:firmware/get_throttled"));
        if let Some(raw) = fs::read_to_string(&file).ok().and_then(|t| parse_throttled(&t)) {
            return Some(throttling_from_rpi(raw));
        }
        if self.use_vcgencmd {
            let out = Command::new("vcgencmd").arg("get_throttled").output().ok()?;
            if out.status.success() {
                return parse_throttled(&String::from_utf8_lossy(&out.stdout)).map(throttling_from_rpi);
            }
        }
        None
    }
}

fn read_millideg(p: &Path) -> Option<f32> {
    let v: i64 = fs::read_to_string(p).ok()?.trim().parse().ok()?;
    Some(v as f32 / 1000.0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn fake() -> (tempfile::TempDir, Sensors) {
        let d = tempfile::tempdir().unwrap();
        let p = Sensors {
            sys: d.path().join("sys"),
            proc: d.path().join("proc"),
            thermal_zone: None,
            throttle_file: None,
            use_vcgencmd: false,
        };
        (d, p)
    }

    fn put(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    #[test]
    fn proc_fields() {
        let (d, p) = fake();
        assert_eq!(p.peak_rss(), None);
        put(d.path(), "proc/self/status", "Name:\tx\nVmPeak:\t  9000 kB\nVmHWM:\t    1234 kB\nVmRSS:\t 1000 kB\n");
        put(d.path(), "proc/meminfo", "MemTotal:       3884320 kB\nMemFree: 1 kB\nMemAvailable:   2000000 kB\n");
        put(d.path(), "proc/sys/kernel/hostname", "pi5\n");
        assert_eq!(p.peak_rss(), Some(1234 * 1024));
        assert_eq!(p.memory_total(), Some(3_884_320 * 1024));
        assert_eq!(p.memory_available(), Some(2_000_000 * 1024));
        assert_eq!(p.hostname().as_deref(), Some("pi5"));
    }

    #[test]
    fn the_real_process_has_a_peak_rss() {
        let p = Sensors::default();
        if Path::new("/proc/self/status").exists() {
            let rss = p.peak_rss().unwrap();
            assert!(rss > 100_000, "{rss}");
        }
    }

    #[test]
    fn thermal_zones() {
        let (d, p) = fake();
        assert_eq!(p.cpu_temp(), None);
        put(d.path(), "sys/class/thermal/thermal_zone0/type", "gpu-thermal\n");
        put(d.path(), "sys/class/thermal/thermal_zone0/temp", "61000\n");
        put(d.path(), "sys/class/thermal/thermal_zone1/type", "acpitz\n");
        put(d.path(), "sys/class/thermal/thermal_zone1/temp", "45500\n");
        assert_eq!(p.cpu_temp(), Some(61.0), "no CPU zone: the hottest");
        put(d.path(), "sys/class/thermal/thermal_zone2/type", "cpu-thermal\n");
        put(d.path(), "sys/class/thermal/thermal_zone2/temp", "52345\n");
        assert_eq!(p.cpu_temp(), Some(52.345));
        let p = Sensors { thermal_zone: Some(d.path().join("sys/class/thermal/thermal_zone1/temp")), ..p };
        assert_eq!(p.cpu_temp(), Some(45.5));
    }

    #[test]
    fn from_a_profile() {
        assert!(!Sensors::for_profile(None).use_vcgencmd);
        let profile =
            SensorProfile { thermal_zone: Some("/t".into()), throttle: None, vcgencmd: true, nvpmodel: false };
        let s = Sensors::for_profile(Some(&profile));
        assert_eq!((s.thermal_zone.as_deref(), s.use_vcgencmd), (Some(Path::new("/t")), true));
    }

    #[test]
    fn rpi_throttle_flags() {
        let (d, p) = fake();
        assert_eq!(p.throttling(), None);
        put(d.path(), "sys/devices/platform/soc/soc:firmware/get_throttled", "50005\n");
        let t = p.throttling().unwrap();
        // 0x50005: under-voltage now (bit 0), throttled now (bit 2),
        // under-voltage occurred (16), throttled occurred (18).
        assert_eq!(t, Throttling { throttled: true, under_voltage: true, soft_temp_limit: false, raw: Some(0x50005) });
        assert_eq!(parse_throttled("throttled=0x80008"), Some(0x80008));
        assert!(throttling_from_rpi(0x80000).soft_temp_limit);
        assert_eq!(
            throttling_from_rpi(0),
            Throttling { throttled: false, under_voltage: false, soft_temp_limit: false, raw: Some(0) }
        );
        assert_eq!(parse_throttled("junk"), None);
    }
}
