//! The device report (`rba bench --json`, the demo's device.json): what was
//! deployed where, the benchmark with raw samples, and on-device accuracy;
//! REPORT.md, "Device report".

use rba_protocol::{DeviceIdentity, EvalResult};
use serde::{Deserialize, Serialize};

use crate::board::{BenchReport, Deployed};

/// Bumped when the JSON layout changes incompatibly (REPORT.md).
pub const DEVICE_SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceReport {
    pub schema_version: u32,
    pub device: DeviceIdentity,
    /// How the device was reached (its label).
    pub target: String,
    pub deployed: Vec<Deployed>,
    pub benchmark: BenchReport,
    pub evaluation: Option<Evaluation>,
}

/// On-device accuracy of each model on one eval bundle.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Evaluation {
    /// The dataset the bundle was built from.
    pub data: String,
    pub samples: u64,
    pub results: Vec<EvalResult>,
}
