//! What rba tells people: the JSON reports (typed and versioned, REPORT.md),
//! the terminal tables, and self-contained HTML pages.
//!
//! - [`analysis`]: `rba analyze`'s report.
//! - [`compaction`]: `rba compact`'s report and the model's `rba.compaction` record.
//! - [`device`]: `rba bench --json`'s report.
//! - [`fleet`]: `rba fleet ... --json`'s report and its table; [`apps`]: the
//!   text of activations, rollbacks and application status.
//! - [`text`]: terminal tables and number formatting.
//! - [`html`]: the HTML page, with inline SVG charts.

pub mod analysis;
pub mod apps;
pub mod compaction;
pub mod device;
pub mod fleet;
pub mod html;
pub mod text;

pub use analysis::AnalysisReport;
pub use compaction::CompactionReport;
pub use device::DeviceReport;
pub use fleet::FleetReport;

/// JSON has no NaN: serde_json writes it as `null`; these read `null` back
/// as NaN so a report round-trips.
pub(crate) mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(*v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }

    /// The same for `(name, value)` lists.
    pub mod pairs {
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        pub fn serialize<S: Serializer>(v: &[(String, f64)], s: S) -> Result<S::Ok, S::Error> {
            v.serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, f64)>, D::Error> {
            let v = Vec::<(String, Option<f64>)>::deserialize(d)?;
            Ok(v.into_iter().map(|(n, x)| (n, x.unwrap_or(f64::NAN))).collect())
        }
    }
}
