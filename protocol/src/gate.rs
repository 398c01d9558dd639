//! Activation gates: conditions a model must meet, measured on the board,
//! before it becomes an application's active model (PROTOCOL.md 5.5).
//!
//! A gate is `metric op threshold [unit]`, e.g. `top1>=97.5`,
//! `p99<=40ms`; a list is comma-separated: `top1>=97.5,agreement>=99,p99<=40ms`.
//!
//! | metric | what | units (default first) |
//! | --- | --- | --- |
//! | `top1` | top-1 accuracy on the eval bundle's labels | `%` |
//! | `agreement` | top-1 agreement with the bundle's expected (reference) outputs | `%` |
//! | `p50`, `p90`, `p99`, `mean` | warm latency per run of the on-device benchmark | `ms`, `us` |
//! | `peak_rss` | peak resident memory of the process that ran the jobs | `MiB` |
//!
//! Operators: `>=`, `<=`, `>`, `<`. The board measures, checks every gate
//! and activates only if all hold; a metric it could not measure (no labels
//! in the bundle, no benchmark) fails its gate.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use serde::{Deserialize, Serialize};

/// What a gate measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateMetric {
    /// Top-1 accuracy against the eval bundle's labels.
    Top1,
    /// Top-1 agreement with the eval bundle's expected outputs.
    Agreement,
    P50,
    P90,
    P99,
    /// Mean warm latency.
    Mean,
    /// Peak resident memory of the job's process.
    PeakRss,
}

/// How the measured value compares with the threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GateOp {
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = "<")]
    Lt,
}

/// The unit of a threshold (and of the measured value it is compared with).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GateUnit {
    #[serde(rename = "%")]
    Percent,
    #[serde(rename = "ms")]
    Millis,
    #[serde(rename = "us")]
    Micros,
    #[serde(rename = "MiB")]
    Mib,
}

/// One condition.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    pub metric: GateMetric,
    pub op: GateOp,
    /// In `unit`.
    pub threshold: f64,
    pub unit: GateUnit,
}

/// What the board measured for the gates (all optional: only what ran).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GateFigures {
    /// Samples of the eval bundle scored.
    pub samples: Option<u32>,
    /// Fraction (0..=1).
    pub top1: Option<f64>,
    /// Fraction (0..=1).
    pub agreement: Option<f64>,
    pub p50_ns: Option<u64>,
    pub p90_ns: Option<u64>,
    pub p99_ns: Option<u64>,
    pub mean_ns: Option<f64>,
    pub peak_rss_bytes: Option<u64>,
}

/// A gate with the value measured for it and the verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateCheck {
    pub gate: Gate,
    /// In the gate's unit; `None`: not measured (the gate fails).
    pub measured: Option<f64>,
    pub passed: bool,
}

impl GateMetric {
    pub const ALL: [GateMetric; 7] = [
        GateMetric::Top1,
        GateMetric::Agreement,
        GateMetric::P50,
        GateMetric::P90,
        GateMetric::P99,
        GateMetric::Mean,
        GateMetric::PeakRss,
    ];

    pub fn name(self) -> &'static str {
        match self {
            GateMetric::Top1 => "top1",
            GateMetric::Agreement => "agreement",
            GateMetric::P50 => "p50",
            GateMetric::P90 => "p90",
            GateMetric::P99 => "p99",
            GateMetric::Mean => "mean",
            GateMetric::PeakRss => "peak_rss",
        }
    }

    /// Units this metric accepts; the first is the default.
    pub fn units(self) -> &'static [GateUnit] {
        match self {
            GateMetric::Top1 | GateMetric::Agreement => &[GateUnit::Percent],
            GateMetric::P50 | GateMetric::P90 | GateMetric::P99 | GateMetric::Mean => {
                &[GateUnit::Millis, GateUnit::Micros]
            }
            GateMetric::PeakRss => &[GateUnit::Mib],
        }
    }

    /// Needs an evaluation on an eval bundle (else a benchmark).
    pub fn needs_evaluation(self) -> bool {
        matches!(self, GateMetric::Top1 | GateMetric::Agreement)
    }

    /// Needs a benchmark.
    pub fn needs_benchmark(self) -> bool {
        !self.needs_evaluation()
    }
}

impl GateOp {
    pub fn symbol(self) -> &'static str {
        match self {
            GateOp::Ge => ">=",
            GateOp::Le => "<=",
            GateOp::Gt => ">",
            GateOp::Lt => "<",
        }
    }

    /// The operator that holds when this one does not.
    pub fn negated(self) -> GateOp {
        match self {
            GateOp::Ge => GateOp::Lt,
            GateOp::Le => GateOp::Gt,
            GateOp::Gt => GateOp::Le,
            GateOp::Lt => GateOp::Ge,
        }
    }

    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            GateOp::Ge => value >= threshold,
            GateOp::Le => value <= threshold,
            GateOp::Gt => value > threshold,
            GateOp::Lt => value < threshold,
        }
    }
}

impl GateUnit {
    pub fn symbol(self) -> &'static str {
        match self {
            GateUnit::Percent => "%",
            GateUnit::Millis => "ms",
            GateUnit::Micros => "us",
            GateUnit::Mib => "MiB",
        }
    }

    fn decimals(self) -> usize {
        match self {
            GateUnit::Percent | GateUnit::Millis => 2,
            GateUnit::Micros | GateUnit::Mib => 1,
        }
    }

    /// `v` with this unit, e.g. `96.80%`, `41.20 ms`.
    pub fn format(self, v: f64) -> String {
        match self {
            GateUnit::Percent => format!("{:.*}%", self.decimals(), v),
            u => format!("{:.*} {}", u.decimals(), v, u.symbol()),
        }
    }
}

impl Gate {
    /// The measured value of this gate's metric in its unit, if measured.
    pub fn measure(&self, f: &GateFigures) -> Option<f64> {
        let latency = |ns: Option<f64>| {
            ns.map(|ns| match self.unit {
                GateUnit::Micros => ns / 1e3,
                _ => ns / 1e6,
            })
        };
        let v = match self.metric {
            GateMetric::Top1 => f.top1.map(|x| 100.0 * x),
            GateMetric::Agreement => f.agreement.map(|x| 100.0 * x),
            GateMetric::P50 => latency(f.p50_ns.map(|v| v as f64)),
            GateMetric::P90 => latency(f.p90_ns.map(|v| v as f64)),
            GateMetric::P99 => latency(f.p99_ns.map(|v| v as f64)),
            GateMetric::Mean => latency(f.mean_ns),
            GateMetric::PeakRss => f.peak_rss_bytes.map(|b| b as f64 / (1024.0 * 1024.0)),
        };
        v.filter(|v| v.is_finite())
    }

    /// This gate against the figures.
    pub fn check(&self, f: &GateFigures) -> GateCheck {
        let measured = self.measure(f);
        let passed = measured.is_some_and(|v| self.op.holds(v, self.threshold));
        GateCheck { gate: *self, measured, passed }
    }
}

/// Checks every gate; all must pass.
pub fn check_all(gates: &[Gate], f: &GateFigures) -> Vec<GateCheck> {
    gates.iter().map(|g| g.check(f)).collect()
}

impl fmt::Display for Gate {
    /// As it is written: `top1>=97.5%`, `p99<=40ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}{}", self.metric.name(), self.op.symbol(), self.threshold, self.unit.symbol())
    }
}

impl fmt::Display for GateCheck {
    /// `top1 96.80% < 97.50%` (failed), `p99 31.20 ms <= 40.00 ms` (passed),
    /// `top1 not measured (needs top1>=97.5%)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = &self.gate;
        match self.measured {
            None => write!(f, "{} not measured (needs {g})", g.metric.name()),
            Some(v) => {
                let op = if self.passed { g.op } else { g.op.negated() };
                write!(f, "{} {} {} {}", g.metric.name(), g.unit.format(v), op.symbol(), g.unit.format(g.threshold))
            }
        }
    }
}

/// Why a gate list did not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("gate {index} '{text}': {reason}")]
pub struct GateParseError {
    /// 1-based position in the list.
    pub index: usize,
    pub text: String,
    pub reason: String,
}

/// Parses `top1>=97.5,agreement>=99,p99<=40ms` (spaces allowed around
/// every part) into gates, in order.
pub fn parse_gates(text: &str) -> Result<Vec<Gate>, GateParseError> {
    if text.trim().is_empty() {
        return Err(GateParseError { index: 1, text: String::new(), reason: "no condition given".into() });
    }
    text.split(',')
        .enumerate()
        .map(|(i, part)| {
            parse_gate(part.trim()).map_err(|reason| GateParseError { index: i + 1, text: part.trim().into(), reason })
        })
        .collect()
}

impl core::str::FromStr for Gate {
    type Err = String;
    fn from_str(s: &str) -> Result<Gate, String> {
        parse_gate(s.trim())
    }
}

fn metric_list() -> String {
    GateMetric::ALL.iter().map(|m| m.name()).collect::<Vec<_>>().join(", ")
}

fn parse_gate(s: &str) -> Result<Gate, String> {
    if s.is_empty() {
        return Err("empty condition (two commas in a row?)".into());
    }
    let name_end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
    let name = &s[..name_end];
    if name.is_empty() {
        return Err(format!("expected a metric ({}) first", metric_list()));
    }
    let metric = GateMetric::ALL
        .iter()
        .copied()
        .find(|m| m.name().eq_ignore_ascii_case(name))
        .ok_or_else(|| format!("unknown metric '{name}': use one of {}", metric_list()))?;
    let rest = s[name_end..].trim_start();
    let (op, rest) = if let Some(r) = rest.strip_prefix(">=") {
        (GateOp::Ge, r)
    } else if let Some(r) = rest.strip_prefix("<=") {
        (GateOp::Le, r)
    } else if let Some(r) = rest.strip_prefix('>') {
        (GateOp::Gt, r)
    } else if let Some(r) = rest.strip_prefix('<') {
        (GateOp::Lt, r)
    } else {
        return Err(format!("expected an operator (>=, <=, >, <) after '{name}'"));
    };
    let rest = rest.trim_start();
    let num_end =
        rest.find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '+' | '-' | 'e'))).unwrap_or(rest.len());
    let number = &rest[..num_end];
    let threshold: f64 = number.parse().map_err(|_| {
        if number.is_empty() {
            format!("expected a number after '{}'", op.symbol())
        } else {
            format!("'{number}' is not a number")
        }
    })?;
    if !threshold.is_finite() {
        return Err(format!("'{number}' is not a finite number"));
    }
    let unit_text = rest[num_end..].trim();
    let allowed = metric.units();
    let unit = if unit_text.is_empty() {
        allowed[0]
    } else {
        let unit = match unit_text.to_ascii_lowercase().as_str() {
            "%" => Some(GateUnit::Percent),
            "ms" => Some(GateUnit::Millis),
            "us" | "µs" => Some(GateUnit::Micros),
            "mib" => Some(GateUnit::Mib),
            _ => None,
        };
        let names = allowed.iter().map(|u| u.symbol()).collect::<Vec<_>>().join(" or ");
        match unit {
            Some(u) if allowed.contains(&u) => u,
            _ => return Err(format!("{name} is measured in {names}, not '{unit_text}'")),
        }
    };
    if threshold < 0.0 {
        return Err(format!("the threshold of {name} cannot be negative"));
    }
    if unit == GateUnit::Percent && threshold > 100.0 {
        return Err(format!("{name} is a percentage: {threshold} is above 100"));
    }
    Ok(Gate { metric, op, threshold, unit })
}

/// The gates written back as a list (`parse_gates` reads it again).
pub fn gates_to_string(gates: &[Gate]) -> String {
    gates.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(",")
}

/// Whether any gate needs an evaluation / a benchmark.
pub fn needs(gates: &[Gate]) -> (bool, bool) {
    (gates.iter().any(|g| g.metric.needs_evaluation()), gates.iter().any(|g| g.metric.needs_benchmark()))
}

impl GateFigures {
    /// A short line of what was measured: `top1 98.20%, agreement 99.40%, p99 3.10 ms, peak 120.0 MiB`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(v) = self.top1 {
            parts.push(format!("top1 {:.2}%", 100.0 * v));
        }
        if let Some(v) = self.agreement {
            parts.push(format!("agreement {:.2}%", 100.0 * v));
        }
        if let Some(v) = self.p50_ns {
            parts.push(format!("p50 {:.2} ms", v as f64 / 1e6));
        }
        if let Some(v) = self.p99_ns {
            parts.push(format!("p99 {:.2} ms", v as f64 / 1e6));
        }
        if let Some(v) = self.peak_rss_bytes {
            parts.push(format!("peak {:.1} MiB", v as f64 / (1024.0 * 1024.0)));
        }
        if parts.is_empty() {
            "nothing measured".to_string()
        } else {
            parts.join(", ")
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let g = parse_gates("top1>=97.5,agreement>=99, p99 <= 40ms,p50<1500us,peak_rss<=300MiB,mean>0.5").unwrap();
        assert_eq!(g.len(), 6);
        assert_eq!(g[0], Gate { metric: GateMetric::Top1, op: GateOp::Ge, threshold: 97.5, unit: GateUnit::Percent });
        assert_eq!(g[1].metric, GateMetric::Agreement);
        assert_eq!(g[2], Gate { metric: GateMetric::P99, op: GateOp::Le, threshold: 40.0, unit: GateUnit::Millis });
        assert_eq!((g[3].op, g[3].unit, g[3].threshold), (GateOp::Lt, GateUnit::Micros, 1500.0));
        assert_eq!(g[4].unit, GateUnit::Mib);
        assert_eq!((g[5].metric, g[5].op, g[5].unit), (GateMetric::Mean, GateOp::Gt, GateUnit::Millis));
        // Written back, it parses to the same list.
        assert_eq!(parse_gates(&gates_to_string(&g)).unwrap(), g);
        assert_eq!(g[0].to_string(), "top1>=97.5%");
        assert_eq!(parse_gates("TOP1 >= 90 %").unwrap()[0].metric, GateMetric::Top1);
    }

    #[test]
    fn clear_errors() {
        let e = |s: &str| parse_gates(s).unwrap_err().to_string();
        assert_eq!(e(""), "gate 1 '': no condition given");
        assert!(e("top1>=97,acc>=3").starts_with("gate 2 'acc>=3': unknown metric 'acc': use one of top1, agreement"));
        assert!(e("top1=97").contains("expected an operator (>=, <=, >, <) after 'top1'"), "{}", e("top1=97"));
        assert!(e("top1=>97").contains("expected an operator"));
        assert!(e("p99<=").contains("expected a number after '<='"));
        assert!(e("p99<=fast").contains("expected a number"));
        assert!(e("p99<=1.2.3ms").contains("'1.2.3' is not a number"));
        assert!(e("p99<=40%").contains("p99 is measured in ms or us, not '%'"), "{}", e("p99<=40%"));
        assert!(e("top1>=97ms").contains("top1 is measured in %, not 'ms'"));
        assert!(e("top1>=101").contains("above 100"));
        assert!(e("p99<=-1").contains("negative"));
        assert!(e("top1>=90,,p99<1").starts_with("gate 2 '': empty condition"));
        assert!(e(">=3").contains("expected a metric"));
    }

    #[test]
    fn checks_name_the_measured_value() {
        let g = parse_gates("top1>=97.5,agreement>=99,p99<=40ms,peak_rss<100").unwrap();
        let f = GateFigures {
            top1: Some(0.968),
            agreement: Some(0.995),
            p99_ns: Some(31_200_000),
            peak_rss_bytes: None,
            ..GateFigures::default()
        };
        let c = check_all(&g, &f);
        assert_eq!(c.iter().map(|c| c.passed).collect::<Vec<_>>(), [false, true, true, false]);
        assert_eq!(c[0].to_string(), "top1 96.80% < 97.50%");
        assert_eq!(c[1].to_string(), "agreement 99.50% >= 99.00%");
        assert_eq!(c[2].to_string(), "p99 31.20 ms <= 40.00 ms");
        assert_eq!(c[3].to_string(), "peak_rss not measured (needs peak_rss<100MiB)");
        let us = parse_gates("p50<=2000us").unwrap()[0]
            .check(&GateFigures { p50_ns: Some(2_500_000), ..Default::default() });
        assert_eq!(us.to_string(), "p50 2500.0 us > 2000.0 us");
        assert_eq!(needs(&g), (true, true));
        assert_eq!(needs(&g[..2]), (true, false));
    }
}
