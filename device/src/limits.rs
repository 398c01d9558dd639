//! The memory budget of a job: what the tensors a model declares may take
//! (checked by `rba_onnx::budget` before tract loads it), and what a
//! worker's memory limit is built on (`crate::worker::data_limit`).
//!
//! From `rba-device serve --memory-budget`, else the board profile's
//! `memory_budget_bytes`, else half of the memory available when the job
//! starts (`MemAvailable`), so that a job leaves the board the other half.

use std::fmt;
use std::str::FromStr;

use rba_onnx::budget::human_bytes;

use crate::sensors::Sensors;

/// The share of `MemAvailable` a job may use unless told otherwise.
pub const DEFAULT_PERCENT: u8 = 50;

/// The budget where `MemAvailable` cannot be read (not Linux, no /proc).
pub const FALLBACK_BYTES: u64 = 1 << 30;

/// What a job's model may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryBudget {
    /// A fixed number of bytes.
    Bytes(u64),
    /// A share (1..=100 percent) of the memory available when a job starts.
    OfAvailable { percent: u8 },
}

impl Default for MemoryBudget {
    fn default() -> Self {
        MemoryBudget::OfAvailable { percent: DEFAULT_PERCENT }
    }
}

impl MemoryBudget {
    /// The budget in bytes now.
    pub fn bytes(&self, sensors: &Sensors) -> u64 {
        match *self {
            MemoryBudget::Bytes(b) => b,
            MemoryBudget::OfAvailable { percent } => match sensors.memory_available() {
                Some(available) => u64::try_from(u128::from(available) * u128::from(percent) / 100).unwrap_or(u64::MAX),
                None => FALLBACK_BYTES,
            },
        }
    }
}

impl fmt::Display for MemoryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemoryBudget::Bytes(b) => write!(f, "{}", human_bytes(*b)),
            MemoryBudget::OfAvailable { percent } => write!(f, "{percent}% of the available memory"),
        }
    }
}

impl FromStr for MemoryBudget {
    type Err = String;

    /// `1073741824`, `512MiB`, `1.5GiB`, `2G` (binary units: K, M, G, T with
    /// or without `iB`/`B`), or `40%` of the available memory.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            return match p.trim().parse::<u8>() {
                Ok(percent) if (1..=100).contains(&percent) => Ok(MemoryBudget::OfAvailable { percent }),
                _ => Err(format!("'{s}': a percentage is 1% to 100%")),
            };
        }
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let shift = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "kb" | "kib" => 10,
            "m" | "mb" | "mib" => 20,
            "g" | "gb" | "gib" => 30,
            "t" | "tb" | "tib" => 40,
            other => {
                return Err(format!("'{s}': unknown unit '{other}' (use bytes, KiB, MiB, GiB, TiB or a percentage)"))
            }
        };
        let value: f64 = number.parse().map_err(|_| format!("'{s}': not a size (e.g. 512MiB, 1.5GiB, 50%)"))?;
        let bytes = value * (1u64 << shift) as f64;
        if !bytes.is_finite() || bytes < 1.0 || bytes >= u64::MAX as f64 {
            return Err(format!("'{s}': out of range"));
        }
        Ok(MemoryBudget::Bytes(bytes as u64))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes_and_percentages() {
        assert_eq!("1073741824".parse(), Ok(MemoryBudget::Bytes(1 << 30)));
        assert_eq!("512MiB".parse(), Ok(MemoryBudget::Bytes(512 << 20)));
        assert_eq!("512 M".parse(), Ok(MemoryBudget::Bytes(512 << 20)));
        assert_eq!("1.5GiB".parse(), Ok(MemoryBudget::Bytes(3 << 29)));
        assert_eq!("2g".parse(), Ok(MemoryBudget::Bytes(2 << 30)));
        assert_eq!("40%".parse(), Ok(MemoryBudget::OfAvailable { percent: 40 }));
        for bad in ["", "0", "0%", "101%", "12 parsecs", "-5", "1e30T"] {
            assert!(bad.parse::<MemoryBudget>().is_err(), "{bad}");
        }
        assert_eq!(MemoryBudget::Bytes(3 << 29).to_string(), "1.5 GiB");
        assert_eq!(MemoryBudget::default().to_string(), "50% of the available memory");
    }

    #[test]
    fn a_share_of_what_is_available() {
        let d = tempfile::tempdir().unwrap();
        let sensors = Sensors { proc: d.path().to_path_buf(), ..Sensors::default() };
        let half = MemoryBudget::default();
        assert_eq!(half.bytes(&sensors), FALLBACK_BYTES, "no /proc/meminfo");
        std::fs::write(d.path().join("meminfo"), "MemTotal: 4000000 kB\nMemAvailable: 3000000 kB\n").unwrap();
        assert_eq!(half.bytes(&sensors), 1_500_000 * 1024);
        assert_eq!(MemoryBudget::Bytes(7).bytes(&sensors), 7);
    }
}
